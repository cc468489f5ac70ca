#!/usr/bin/env bash
# Memory per memory (issue 15): engram's server RSS per memory, with its
# vectors in memory and in compact mode, against hnswlib's index bytes per
# vector, on the same clustered N x DIM vectors for each N, in one run, with
# recall@10 and recall latency for each (scripts/bench_memory.py says exactly
# what is measured). Writes bench-results/memory-<date>.json.
#
# Environment (defaults in brackets):
#   SIZES ["100000 1000000"] DIM [768]   sizes of the generated clustered sets
#   STORAGE [memory,compact]      engram vector storages to measure
#   THREADS [2]                   hnswlib build threads
#   BASELINE_TOOL [../shared/tools/hnsw_baseline.py]   (generates the sets)
#   VENV [.venv-bench]            Python with numpy, hnswlib and engram-grpc
#   ENGRAM_BIN [target/ci/engram]
#   OUT [bench-results/memory-<date>.json]
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${SIZES:-100000 1000000}"
DIM="${DIM:-768}"
STORAGE="${STORAGE:-memory,compact}"
THREADS="${THREADS:-2}"
BASELINE_TOOL="${BASELINE_TOOL:-../shared/tools/hnsw_baseline.py}"
VENV="${VENV:-.venv-bench}"
export ENGRAM_BIN="${ENGRAM_BIN:-target/ci/engram}"
OUT="${OUT:-bench-results/memory-$(date -u +%Y-%m-%d).json}"
WORK="bench-results/tmp"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[ -f "$BASELINE_TOOL" ] || die "baseline tool $BASELINE_TOOL not found (set BASELINE_TOOL)"
command -v python3 >/dev/null || die "python3 is required"
. scripts/bench-venv.sh
install_python_client

step "building engram and engram-bench (ci profile)"
cargo build --profile ci -p engram-server -p engram-bench >&2

mkdir -p "$WORK"
DATA_ARGS=()
for N in $SIZES; do
  DATA="$WORK/clustered-$DIM-$N"
  if [ ! -f "$DATA/groundtruth.ivecs" ]; then
    step "generating $N x $DIM clustered vectors into $DATA"
    "$PY" "$BASELINE_TOOL" gen --dim "$DIM" --n "$N" --queries 1000 --out "$DATA" >&2
  fi
  DATA_ARGS+=(--data "$DATA")
done

step "measuring (per size: hnswlib, then engram in each storage)"
"$PY" scripts/bench_memory.py "${DATA_ARGS[@]}" --storage "$STORAGE" --threads "$THREADS" --out "$OUT"
echo "wrote $OUT" >&2
