#!/usr/bin/env bash
# The streaming benchmarks (issue 13): sustained indexed ingest vs hnswlib,
# burst accepted rate with wal.sync=always (with a server CPU profile),
# recall latency while streaming, ack latency per wal.sync mode, and a
# worker / batch-size sweep. Each writes bench-results/<name>-<date>.json;
# scripts/bench_streaming.py says exactly what each measures.
#
# Usage: scripts/bench_streaming.sh [--only ingest,burst,recall,sync,sweep]
#                                   [--sustained-rate R]
# Environment (defaults in brackets):
#   BASELINE_TOOL [../shared/tools/hnsw_baseline.py]   (generates the set)
#   VENV [.venv-bench]            Python with numpy, hnswlib and engram-grpc
#   ENGRAM_BIN [target/ci/engram]
# Needs `perf` for the burst's profile (Debian: linux-perf); without it the
# result says why there is no profile.
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE_TOOL="${BASELINE_TOOL:-../shared/tools/hnsw_baseline.py}"
VENV="${VENV:-.venv-bench}"
export ENGRAM_BIN="${ENGRAM_BIN:-target/ci/engram}"
WORK="bench-results/tmp"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[ -f "$BASELINE_TOOL" ] || die "baseline tool $BASELINE_TOOL not found (set BASELINE_TOOL)"
command -v python3 >/dev/null || die "python3 is required"
. scripts/bench-venv.sh
install_python_client

step "building engram (ci profile)"
cargo build --profile ci -p engram-server -p engram-bench >&2

DATA="$WORK/clustered-768-100000"
if [ ! -f "$DATA/groundtruth.ivecs" ]; then
  mkdir -p "$WORK"
  step "generating 100000 x 768 clustered vectors into $DATA"
  "$PY" "$BASELINE_TOOL" gen --dim 768 --n 100000 --queries 1000 --out "$DATA" >&2
fi

"$PY" scripts/bench_streaming.py --data "$DATA" --baseline "$BASELINE_TOOL" "$@"
