#!/usr/bin/env bash
# The cost of cluster mode on one machine, measured in one run by
# `engram-bench cluster-load` with the same load against:
#   1. a single node (`engram serve`, WAL synced before every ack);
#   2. a cluster on this machine: 3 NATS servers (JetStream, R3 streams,
#      sync_interval: always) and 3 engram nodes, writes spread over the
#      three nodes, recalls asked of another node than the write's, with
#      its consistency token.
# Writes one JSON file with both runs and the cluster/single ratios:
#
#   scripts/bench_cluster.sh
#
# Environment (defaults in brackets): PROFILE [release], WRITERS [16],
# COUNT [20000] writes per run (the same data volume, so recall latencies
# compare), DIM [384], SPACES [8], RECALLS [500], PARTITIONS [8],
# OUT [bench-results/cluster-<date>.json].
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
WRITERS="${WRITERS:-16}"
COUNT="${COUNT:-20000}"
DIM="${DIM:-384}"
SPACES="${SPACES:-8}"
RECALLS="${RECALLS:-500}"
PARTITIONS="${PARTITIONS:-8}"
OUT="${OUT:-bench-results/cluster-$(date -u +%Y-%m-%d).json}"

nats=$(bash scripts/install-nats.sh | tail -1)
cargo build --profile "$PROFILE" -p engram-server -p engram-bench >&2
bin="target/$PROFILE/engram"
bench="target/$PROFILE/engram-bench"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # http port
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$1/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: the node on port $1 never became ready" >&2
  return 1
}
load() { # label grpc-list
  "$bench" cluster-load --label "$1" --grpc "$2" --writers "$WRITERS" --count "$COUNT" \
    --dim "$DIM" --spaces "$SPACES" --recalls "$RECALLS"
}

# 1. Single node.
h=$(free_port); g=$(free_port)
"$bin" serve --data-dir "$work/single" --http-addr "127.0.0.1:$h" --grpc-addr "127.0.0.1:$g" 2>"$work/single.log" &
pids+=($!)
wait_ready "$h"
echo "single node: $COUNT writes" >&2
load single "127.0.0.1:$g" >"$work/single.json"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# 2. Cluster: 3 NATS servers, 3 engram nodes.
cports=($(free_port) $(free_port) $(free_port))
routes="nats://127.0.0.1:${cports[0]}, nats://127.0.0.1:${cports[1]}, nats://127.0.0.1:${cports[2]}"
urls=()
for i in 0 1 2; do
  p=$(free_port)
  urls+=("\"nats://127.0.0.1:$p\"")
  cat >"$work/nats$i.conf" <<CONF
server_name: nats$i
listen: 127.0.0.1:$p
jetstream { store_dir: "$work/js$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:${cports[$i]}, routes: [$routes] }
CONF
  "$nats" -c "$work/nats$i.conf" 2>"$work/nats$i.log" &
  pids+=($!)
done
grpcs=()
https=()
for i in 1 2 3; do
  h=$(free_port); g=$(free_port)
  https+=("$h"); grpcs+=("127.0.0.1:$g")
  cat >"$work/node$i.toml" <<CONF
[http]
addr = "127.0.0.1:$h"
[grpc]
addr = "127.0.0.1:$g"
[cluster]
nats = [$(IFS=,; echo "${urls[*]}")]
node_id = "node$i"
partitions = $PARTITIONS
replicas = 3
CONF
  "$bin" serve --config "$work/node$i.toml" --data-dir "$work/node$i" 2>"$work/node$i.log" &
  pids+=($!)
done
for h in "${https[@]}"; do wait_ready "$h"; done
# Every partition served before the load starts.
for _ in $(seq 600); do
  n=$(curl -fs "http://127.0.0.1:${https[0]}/v1/cluster" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for p in d["partitions"] if p["owner"]))' 2>/dev/null || echo 0)
  [ "$n" -ge "$PARTITIONS" ] && break
  sleep 0.2
done
sleep 4 # the owners' own takeovers (replay of nothing) finish
echo "cluster (3 NATS + 3 engram): $COUNT writes" >&2
load cluster "$(IFS=,; echo "${grpcs[*]}")" >"$work/cluster.json"

mkdir -p "$(dirname "$OUT")"
python3 - "$work/single.json" "$work/cluster.json" "$OUT" "$(nproc)" "$("$nats" --version)" <<'PY'
import json, sys
single, cluster = (json.load(open(p)) for p in sys.argv[1:3])
def ratio(a, b):
    return round(a / b, 3) if b else None
out = {
    "what": "cluster mode vs single node on one machine (scripts/bench_cluster.sh)",
    "cores": int(sys.argv[4]),
    "nats_server": sys.argv[5],
    "single": single,
    "cluster": cluster,
    "cluster_over_single": {
        "acked_per_sec": ratio(cluster["acked_per_sec"], single["acked_per_sec"]),
        "ack_p50": ratio(cluster["ack_latency"]["p50_ms"], single["ack_latency"]["p50_ms"]),
        "ack_p99": ratio(cluster["ack_latency"]["p99_ms"], single["ack_latency"]["p99_ms"]),
        "recall_p50": ratio(cluster["recall_latency"]["p50_ms"], single["recall_latency"]["p50_ms"]),
        "recall_p99": ratio(cluster["recall_latency"]["p99_ms"], single["recall_latency"]["p99_ms"]),
    },
}
json.dump(out, open(sys.argv[3], "w"), indent=2)
print(json.dumps(out["cluster_over_single"], indent=2))
for k in ("single", "cluster"):
    r = out[k]
    print(f'{k}: {r["acked_per_sec"]:.0f} acked/s, ack p50 {r["ack_latency"]["p50_ms"]:.2f} ms p99 {r["ack_latency"]["p99_ms"]:.2f} ms, recall p50 {r["recall_latency"]["p50_ms"]:.2f} ms p99 {r["recall_latency"]["p99_ms"]:.2f} ms, {r["recalls_finding_their_write"]}/{r["recall_latency"]["count"]} recalls found their write, {r["errors"]} errors')
PY
echo "wrote $OUT" >&2
