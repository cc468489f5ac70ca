#!/usr/bin/env bash
# Filtered recall benchmark (issue 16): on N x DIM clustered vectors
# (default 100K x 768, made by the baseline tool), tags at selectivities
# 0.1%, 1%, 10% and 50%: recall@10 against an exact filtered search and
# p50/p99 recall latency against unfiltered recall, in process, in one run;
# each selectivity also with the exact scan and the graph search forced
# (where the switch between them belongs). Writes
# bench-results/filters-<date>.json with the machine, the commit and the
# targets (recall@10 >= 0.95, p99 <= 2x unfiltered). About 3 minutes; run it
# on an otherwise idle machine.
#
# Environment (defaults in brackets):
#   N [100000] DIM [768] QUERIES [300]
#   SELECTIVITIES [0.001,0.01,0.1,0.5]
#   BASELINE_TOOL [../shared/tools/hnsw_baseline.py]   (generates the set)
#   VENV [.venv-bench]   Python with numpy, for the generator
#   OUT [bench-results/filters-<date>.json]
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-100000}"
DIM="${DIM:-768}"
QUERIES="${QUERIES:-300}"
SELECTIVITIES="${SELECTIVITIES:-0.001,0.01,0.1,0.5}"
BASELINE_TOOL="${BASELINE_TOOL:-../shared/tools/hnsw_baseline.py}"
VENV="${VENV:-.venv-bench}"
OUT="${OUT:-bench-results/filters-$(date -u +%Y-%m-%d).json}"
DATA="bench-results/tmp/clustered-$DIM-$N"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

step "building engram-bench (ci profile)"
cargo build --profile ci -p engram-bench >&2
if [ ! -f "$DATA/base.fvecs" ]; then
  [ -f "$BASELINE_TOOL" ] || die "no data set at $DATA and no baseline tool at $BASELINE_TOOL to make one (set BASELINE_TOOL)"
  . scripts/bench-venv.sh
  step "generating $N x $DIM clustered vectors into $DATA"
  mkdir -p "$DATA"
  "$PY" "$BASELINE_TOOL" gen --dim "$DIM" --n "$N" --queries 1000 --out "$DATA" >&2
fi

step "measuring filtered recall on $DATA"
result=$(mktemp)
trap 'rm -f "$result"' EXIT
target/ci/engram-bench filters --data "$DATA" --queries "$QUERIES" \
  --selectivities "$SELECTIVITIES" --paths >"$result"
commit=$(git rev-parse HEAD)
dirty=$([ -z "$(git status --porcelain --untracked-files=no)" ] && echo false || echo true)
python3 - "$OUT" "$commit" "$dirty" "$result" <<'PY'
import json, os, platform, subprocess, sys
out, commit, dirty = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
r = json.load(open(sys.argv[4]))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
r = {
    "date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
    "commit": commit,
    "dirty": dirty,
    "command": "scripts/bench_filters.sh",
    **r,
}
json.dump(r, open(out, "w"), indent=2)
print(f"unfiltered: recall@10 {r['unfiltered']['recall_at_k']:.4f}, p50 {r['unfiltered']['latency_us']['p50']:.0f} us, p99 {r['unfiltered']['latency_us']['p99']:.0f} us")
for f in r["filtered"]:
    m = f["measured"]
    print(f"selectivity {f['selectivity']}: {f['admitted']} admitted, {f['path']}: recall@10 {m['recall_at_k']:.4f}, "
          f"p50 {m['latency_us']['p50']:.0f} us, p99 {m['latency_us']['p99']:.0f} us = {m['p99_vs_unfiltered']:.2f}x unfiltered; "
          f"targets {f['targets']}")
print(f"all targets met: {r['all_targets_met']}")
PY
echo "wrote $OUT" >&2
