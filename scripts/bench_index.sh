#!/usr/bin/env bash
# Index benchmark: engram's HNSW against hnswlib, side by side on the same
# files in one run, on
#   1. a clustered N x DIM set made by the baseline tool (default 100K x 768),
#   2. the real-text set ../shared/data/minilm-dev (20K x 384).
# Prints one combined JSON object and writes it to
# bench-results/index-<date>.json, with the ratios that are the acceptance
# bar: engram/hnswlib build rate, and p50 latency at the first ef that
# reaches recall@10 0.95 for each library.
#
# Takes several minutes at the default size; run it on an otherwise idle
# machine. Quick run:  N=20000 scripts/bench_index.sh
#
# Environment (defaults in brackets):
#   N [100000] DIM [768]      size of the generated clustered set
#   THREADS [2] M [16] EFC [100]
#   EFS ["16 24 32 40 48 64 128"]   search beam widths to measure
#   BASELINE_TOOL [../shared/tools/hnsw_baseline.py]
#   MINILM_DIR [../shared/data/minilm-dev]   (set to "" to skip it)
#   VENV [.venv-bench]         Python environment with numpy + hnswlib
#   OUT [bench-results/index-<date>.json]
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-100000}"
DIM="${DIM:-768}"
THREADS="${THREADS:-2}"
M="${M:-16}"
EFC="${EFC:-100}"
EFS="${EFS:-16 24 32 40 48 64 128}"
BASELINE_TOOL="${BASELINE_TOOL:-../shared/tools/hnsw_baseline.py}"
MINILM_DIR="${MINILM_DIR-../shared/data/minilm-dev}"
VENV="${VENV:-.venv-bench}"
OUT="${OUT:-bench-results/index-$(date -u +%Y-%m-%d).json}"
WORK="bench-results/tmp"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[ -f "$BASELINE_TOOL" ] || die "baseline tool $BASELINE_TOOL not found (set BASELINE_TOOL)"
command -v python3 >/dev/null || die "python3 is required"
command -v cargo >/dev/null || die "cargo is required"

. scripts/bench-venv.sh

step "building engram-bench (release)"
cargo build --release -p engram-bench >&2
BENCH=target/release/engram-bench

mkdir -p "$WORK" "$(dirname "$OUT")"
CLUSTERED="$WORK/clustered-$DIM-$N"
if [ ! -f "$CLUSTERED/groundtruth.ivecs" ]; then
  step "generating the clustered set ($N x $DIM) in $CLUSTERED"
  "$PY" "$BASELINE_TOOL" gen --dim "$DIM" --n "$N" --out "$CLUSTERED" >&2
fi

# run_pair NAME DIR: hnswlib, then engram, on the same files.
run_pair() {
  local name="$1" dir="$2"
  step "$name: hnswlib"
  # shellcheck disable=SC2086
  "$PY" "$BASELINE_TOOL" run --data "$dir" --threads "$THREADS" --M "$M" --efc "$EFC" --ef $EFS \
    >"$WORK/$name-hnswlib.json"
  step "$name: engram"
  # shellcheck disable=SC2086
  "$BENCH" index --data "$dir" --threads "$THREADS" --m "$M" --efc "$EFC" --ef $EFS \
    --json-out "$WORK/$name-engram.json" >/dev/null
}

sets=("clustered:$CLUSTERED")
[ -n "$MINILM_DIR" ] && sets+=("minilm-dev:$MINILM_DIR")
for s in "${sets[@]}"; do
  run_pair "${s%%:*}" "${s#*:}"
done

step "combining results into $OUT"
CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PY" - "$OUT" "$WORK" "$CPU" "$(nproc)" "$COMMIT" "${sets[@]%%:*}" <<'EOF'
import datetime, json, sys

out, work, cpu, cores, commit, *names = sys.argv[1:]
TARGET = 0.95

def first_at(rows, recall):
    """The first row (by ef) whose recall@10 reaches `recall`, or None."""
    for r in sorted(rows, key=lambda r: r["ef"]):
        if r["recall_at_10"] >= recall:
            return r
    return None

sets = {}
for name in names:
    h = json.load(open(f"{work}/{name}-hnswlib.json"))
    e = json.load(open(f"{work}/{name}-engram.json"))
    he, ee = first_at(h["search"], TARGET), first_at(e["search"], TARGET)
    sets[name] = {
        "n": e["n"], "dim": e["dim"],
        "hnswlib": h, "engram": e,
        "ratios": {
            "build_rate_engram_over_hnswlib": e["build_vectors_per_s"] / h["build_vectors_per_s"],
            "recall_target": TARGET,
            "hnswlib_first_ef_at_target": he and he["ef"],
            "engram_first_ef_at_target": ee and ee["ef"],
            "hnswlib_p50_us_at_target": he and he["p50_us"],
            "engram_p50_us_at_target": ee and ee["p50_us"],
            "p50_at_target_engram_over_hnswlib": (ee["p50_us"] / he["p50_us"]) if he and ee else None,
            "engram_default_ef_search": e["default_ef_search"],
            "engram_recall_at_default_ef": e["default_search"]["recall_at_10"],
        },
    }

report = {
    "benchmark": "index",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit,
    "machine": {"cpu": cpu, "cores": int(cores), "simd": next(iter(sets.values()))["engram"]["simd"]},
    "sets": sets,
}
with open(out, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
print(json.dumps(report, indent=1))
for name, s in sets.items():
    r = s["ratios"]
    us = lambda v: "n/a" if v is None else f"{v:.0f}us"
    print(f"{name}: build engram/hnswlib {r['build_rate_engram_over_hnswlib']:.2f}x; "
          f"recall>={TARGET}: hnswlib ef={r['hnswlib_first_ef_at_target']} p50={us(r['hnswlib_p50_us_at_target'])}, "
          f"engram ef={r['engram_first_ef_at_target']} p50={us(r['engram_p50_us_at_target'])}; "
          f"engram default ef={r['engram_default_ef_search']} recall={r['engram_recall_at_default_ef']}",
          file=sys.stderr)
EOF
