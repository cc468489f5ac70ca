#!/usr/bin/env bash
# Installs what the tests need and runs all of them. This is the README's
# test command, and exactly what CI runs (.ci/run calls it).
#
#   1. formatting and clippy (warnings are errors)
#   2. Prometheus rules: promtool check + unit tests (installs the Debian
#      package `prometheus` when promtool is missing; the live Prometheus
#      test below uses its `prometheus` binary too)
#   3. the Grafana dashboard and runbook links
#   4. every Rust test (unit, property, integration, end-to-end, crash,
#      chaos, live Prometheus) in the optimized `ci` profile
#
# Fails loudly when a required tool is missing; never skips a suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required but not installed ($2)" >&2; exit 1; }
}

need cargo "install the Rust toolchain from https://rustup.rs"
need python3 "install Python 3 (apt-get install python3)"
cargo fmt --version >/dev/null 2>&1 || { echo "error: rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "error: clippy missing: rustup component add clippy" >&2; exit 1; }

# The recall-quality tests read the shared data set beside the checkout.
data="../shared/data/minilm-dev/base.fvecs"
[ -f "$data" ] || { echo "error: $data not found: the tests need ../shared/data beside the checkout" >&2; exit 1; }

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

step "Prometheus rules (promtool)"
bash scripts/promtool-test.sh | tee "$log_dir/promtool.log"
need prometheus "the live Prometheus test needs it: apt-get install prometheus"

step "Grafana dashboard and runbook links"
python3 scripts/check-dashboard.py | tee "$log_dir/dashboard.log"

# Index work in a debug build is 10-50x slower: tests run in the optimized
# `ci` profile, which keeps debug assertions and overflow checks.
step "cargo test (profile ci)"
set +e
cargo test --workspace --profile ci --no-fail-fast 2>&1 | tee "$log_dir/cargo.log"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "cargo test failed (exit $status)" >&2; exit "$status"; }

rust=$(grep -E '^test result:' "$log_dir/cargo.log" | awk '{p+=$4; f+=$6} END {printf "%d %d", p, f}')
prom=$(grep -E '^promtool: ' "$log_dir/promtool.log" | tail -1 | awk '{print $2, $4}')
dash=$(grep -E '^dashboard: ' "$log_dir/dashboard.log" | tail -1 | awk '{print $2, $4}')
read -r rp rf <<<"$rust"
read -r pp pf <<<"$prom"
read -r dp df <<<"$dash"
echo
echo "rust tests: $rp passed, $rf failed; promtool: $pp passed, $pf failed; dashboard: $dp passed, $df failed"
echo "total: $((rp + pp + dp)) passed, $((rf + pf + df)) failed"
