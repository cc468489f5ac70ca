#!/usr/bin/env bash
# Starts a local observability stack beside an `engram serve` on this host
# (HTTP on 127.0.0.1:8080, the default), in the foreground; Ctrl-C stops it.
#
#   scripts/observability-stack.sh
#
#   1. checks deployments/observability/prometheus.yml with promtool (when
#      installed);
#   2. Prometheus on 127.0.0.1:9090 with that file: the Prometheus binary
#      installed on this host when there is one (Debian: apt-get install
#      prometheus), else the `prometheus` service of
#      deployments/observability/docker-compose.yml;
#   3. Grafana on 127.0.0.1:3000 with the provisioned datasource and the
#      engram dashboard, through `docker compose up -d grafana` when Docker
#      (with the compose plugin) can run containers; otherwise it says how to
#      start Grafana and goes on with Prometheus alone.
#
# Environment:
#   PROMETHEUS_DATA  TSDB directory of the host Prometheus
#                    (default: a new temporary directory, removed on exit)
#   NO_GRAFANA=1     do not try Docker for Grafana
#
# Exits non-zero when the config check fails or no Prometheus can be started.
set -euo pipefail
cd "$(dirname "$0")/.."

stack=deployments/observability
config=$stack/prometheus.yml
compose=(docker compose -f "$stack/docker-compose.yml")
listen=127.0.0.1:9090

if command -v promtool >/dev/null 2>&1; then
  promtool check config "$config"
else
  echo "note: promtool not found, $config not checked"
fi

# True when Docker can run containers here: the CLI, the compose plugin and a
# daemon that answers.
docker_works() {
  command -v docker >/dev/null 2>&1 \
    && docker compose version >/dev/null 2>&1 \
    && docker info >/dev/null 2>&1
}

grafana_instructions() {
  cat <<EOT
Grafana was not started (${1}). To see the dashboard, either
  - on a machine where Docker runs: ${compose[*]} up -d grafana
  - or with a Grafana installed on this host: copy $stack/provisioning/* into
    its provisioning directory (e.g. /etc/grafana/provisioning), set \`path\` in
    dashboards/engram.yml to $(pwd)/deployments/grafana/dashboards, and
    restart Grafana; or import deployments/grafana/dashboards/streaming_dashboard.json
    by hand (Dashboards > New > Import) with a Prometheus datasource at http://$listen.
EOT
}

compose_services=()
prom_pid=""
prom_data=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$prom_pid" ] && kill -0 "$prom_pid" 2>/dev/null; then
    kill -TERM "$prom_pid" 2>/dev/null || true
    wait "$prom_pid" 2>/dev/null || true
  fi
  if [ "${#compose_services[@]}" -gt 0 ]; then
    "${compose[@]}" stop "${compose_services[@]}" || true
  fi
  if [ -n "$prom_data" ] && [ -z "${PROMETHEUS_DATA:-}" ]; then
    rm -rf "$prom_data"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

have_docker=false
if [ "${NO_GRAFANA:-0}" != 1 ] && docker_works; then
  have_docker=true
fi

if command -v prometheus >/dev/null 2>&1; then
  prom_data="${PROMETHEUS_DATA:-$(mktemp -d -t engram-prometheus.XXXXXX)}"
  mkdir -p "$prom_data"
  prometheus --config.file="$config" \
    --storage.tsdb.path="$prom_data" \
    --web.listen-address="$listen" &
  prom_pid=$!
elif docker_works; then
  "${compose[@]}" up -d prometheus
  compose_services+=(prometheus)
else
  echo "error: neither a prometheus binary (apt-get install prometheus) nor a working Docker (with the compose plugin) is available" >&2
  exit 1
fi

if [ "${NO_GRAFANA:-0}" = 1 ]; then
  grafana_instructions "NO_GRAFANA=1"
elif $have_docker; then
  "${compose[@]}" up -d grafana
  compose_services+=(grafana)
else
  grafana_instructions "Docker cannot run containers here"
fi

cat <<EOT

Prometheus: http://$listen  (targets: /targets, rules: /rules, alerts: /alerts)
Scraping:   engram at 127.0.0.1:8080 (start it with: engram serve)
EOT
if [[ " ${compose_services[*]} " == *" grafana "* ]]; then
  echo "Grafana:    http://127.0.0.1:3000  (dashboard: engram / engram streaming)"
fi
echo "Ctrl-C stops the stack."

if [ -n "$prom_pid" ]; then
  # The script lives as long as the host Prometheus does.
  wait "$prom_pid"
else
  "${compose[@]}" logs -f "${compose_services[@]}"
fi
