#!/usr/bin/env bash
# Builds and tests the TypeScript client (clients/typescript):
#
#   1. npm ci, build (tsc -> dist/), type-check (sources, tests' types)
#   2. the Node tests (node --test): unit tests, then end-to-end tests
#      against real `engram serve` processes the tests start themselves
#   3. the browser test: headless Chromium (/usr/bin/chromium, installed
#      with apt-get when missing) runs the client bundled by esbuild
#   4. the example (examples/streaming/typescript_client.ts) against a
#      server this script starts on free ports and stops
#
# ENGRAM_BIN: the server binary (default target/ci/engram, relative to the
# repo root). Fails loudly when a tool or the binary is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required but not installed ($2)" >&2; exit 1; }
}

need node "install Node.js 20 or later (https://nodejs.org, or apt-get install nodejs npm)"
need npm "install npm (it comes with Node.js; apt-get install npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "error: Node.js >= 20 is required, found $(node --version)" >&2; exit 1; }

ENGRAM_BIN=${ENGRAM_BIN:-target/ci/engram}
case "$ENGRAM_BIN" in /*) ;; *) ENGRAM_BIN="$root/$ENGRAM_BIN" ;; esac
[ -x "$ENGRAM_BIN" ] || { echo "error: engram binary not found or not executable at $ENGRAM_BIN (build it with 'cargo build --profile ci -p engram-server' or set ENGRAM_BIN)" >&2; exit 1; }
export ENGRAM_BIN

CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
  step "installing chromium (apt-get) for the browser test"
  need apt-get "the browser test needs Chromium at $CHROMIUM: install the Debian package 'chromium'"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y chromium
  [ -x "$CHROMIUM" ] || { echo "error: apt-get install chromium did not provide $CHROMIUM" >&2; exit 1; }
fi

log_dir=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$log_dir"
}
trap cleanup EXIT

cd clients/typescript

step "npm ci"
npm ci --no-audit --no-fund

step "build (tsc -> dist/)"
npm run --silent build

step "type-check"
npm run --silent typecheck

# TAP output ends with '# pass N' / '# fail N'; keep the exit status.
run_tests() {
  local name=$1; shift
  set +e
  node --test --test-reporter=tap "$@" 2>&1 | tee "$log_dir/$name.log"
  local status=${PIPESTATUS[0]}
  set -e
  echo "$name: $(grep -E '^# pass ' "$log_dir/$name.log" | tail -1) / $(grep -E '^# fail ' "$log_dir/$name.log" | tail -1)"
  [ "$status" -eq 0 ] || { echo "error: $name tests failed (exit $status)" >&2; exit "$status"; }
}

step "Node tests (unit + against a real engram server: $ENGRAM_BIN)"
run_tests node test/unit.test.mjs test/stream.test.mjs test/security.test.mjs test/filters.test.mjs test/recency.test.mjs test/expiry.test.mjs

step "browser test (headless Chromium, client bundled by esbuild)"
run_tests browser test/browser/browser.test.mjs
echo "screenshot: clients/typescript/test-artifacts/browser.png"

step "npm install ./clients/typescript into a fresh project (a copy without node_modules or dist)"
fresh="$log_dir/fresh"
mkdir -p "$fresh/pkg" "$fresh/app"
tar -C "$root/clients/typescript" --exclude=node_modules --exclude=dist --exclude=dist-example \
  --exclude=test-artifacts -cf - . | tar -C "$fresh/pkg" -xf -
(cd "$fresh/app" && npm init -y >/dev/null && npm install --no-audit --no-fund "$fresh/pkg" &&
  node --input-type=module -e '
    import { EngramWebSocketClient } from "engram-client";
    if (typeof EngramWebSocketClient !== "function") throw new Error("EngramWebSocketClient is not exported");
    console.log("fresh install: engram-client imports");
  ')

step "example: examples/streaming/typescript_client.ts against a server on free ports"
data_dir="$log_dir/example-data"
mkdir -p "$data_dir"
"$ENGRAM_BIN" serve --data-dir "$data_dir" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$log_dir/example-server.log" 2>&1 &
server_pid=$!
http_addr=""
for _ in $(seq 200); do
  http_addr=$(sed -n 's/.*listening listener="\{0,1\}http"\{0,1\} addr=\([0-9.:]*\).*/\1/p' "$log_dir/example-server.log" | head -1)
  [ -n "$http_addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log_dir/example-server.log" >&2; echo "error: engram exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$http_addr" ] || { cat "$log_dir/example-server.log" >&2; echo "error: no http listener line in the server log" >&2; exit 1; }
ready=""
for _ in $(seq 300); do
  if node -e "fetch('http://$http_addr/health/ready').then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))"; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { cat "$log_dir/example-server.log" >&2; echo "error: the server never became ready" >&2; exit 1; }
npm run --silent example -- "ws://$http_addr/v1/stream"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""

step "summary"
for n in node browser; do
  echo "$n: $(grep -E '^# pass ' "$log_dir/$n.log" | tail -1) / $(grep -E '^# fail ' "$log_dir/$n.log" | tail -1)"
done
echo "example: OK"
