#!/usr/bin/env bash
# Recall latency per transport (REST, gRPC unary, gRPC RecallStream,
# WebSocket) on the same space of the same server, measured in one run by
# `engram-bench recall-transports`. Starts each given server binary on free
# ports with a fresh data directory, fills a space, measures, stops it, and
# writes one JSON file with every binary's results:
#
#   scripts/bench_recall_transports.sh                 # target/release/engram
#   scripts/bench_recall_transports.sh OLD_BIN NEW_BIN # compare two builds
#
# Environment (defaults in brackets): PROFILE [release] (the cargo profile
# built for the default binary and for the bench program), DIM [384],
# MEMORIES [5000], QUERIES [500], K [10],
# OUT [bench-results/recall-transports-<date>.json].
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
DIM="${DIM:-384}"
MEMORIES="${MEMORIES:-5000}"
QUERIES="${QUERIES:-500}"
K="${K:-10}"
OUT="${OUT:-bench-results/recall-transports-$(date -u +%Y-%m-%d).json}"

cargo build --profile "$PROFILE" -p engram-server -p engram-bench >&2
bench="target/$PROFILE/engram-bench"
[ "$#" -gt 0 ] || set -- "target/$PROFILE/engram"

runs=()
for bin in "$@"; do
  [ -x "$bin" ] || { echo "error: $bin is not an executable" >&2; exit 1; }
  data=$(mktemp -d)
  log="$data/server.log"
  "$bin" serve --data-dir "$data/d" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 2>"$log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  http="" grpc=""
  for _ in $(seq 300); do
    http=$(grep -o 'listener="http" addr=[0-9.:]*' "$log" | head -1 | sed 's/.*addr=//') || true
    grpc=$(grep -o 'listener="grpc" addr=[0-9.:]*' "$log" | head -1 | sed 's/.*addr=//') || true
    [ -n "$http" ] && [ -n "$grpc" ] && curl -fs "http://$http/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  [ -n "$http" ] || { echo "error: $bin did not start; log:" >&2; cat "$log" >&2; exit 1; }
  echo "==> $bin (http $http, grpc $grpc)" >&2
  result=$("$bench" recall-transports --http "$http" --grpc "$grpc" \
    --dim "$DIM" --memories "$MEMORIES" --queries "$QUERIES" --k "$K")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  runs+=("$(python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r["server_binary"]=sys.argv[1]; print(json.dumps(r))' "$bin" "$result")")
done

mkdir -p "$(dirname "$OUT")"
printf '%s\n' "${runs[@]}" | python3 -c '
import json, os, platform, subprocess, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
out = {"machine": {"cores": os.cpu_count(), "cpu": cpu}, "commit": commit,
       "profile": os.environ.get("PROFILE", "release"),
       "command": "scripts/bench_recall_transports.sh " + " ".join(r["server_binary"] for r in runs),
       "runs": runs}
print(json.dumps(out, indent=2))
' | tee "$OUT"
echo "wrote $OUT" >&2
