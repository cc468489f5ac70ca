#!/usr/bin/env bash
# Installs what the tests need and runs all of them. This is the README's
# test command, and exactly what CI runs (.ci/run calls it).
#
# Fails loudly when a required tool is missing; never skips a suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required but not installed ($2)" >&2; exit 1; }
}

need cargo "install the Rust toolchain from https://rustup.rs"
cargo fmt --version >/dev/null 2>&1 || { echo "error: rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "error: clippy missing: rustup component add clippy" >&2; exit 1; }

# The recall-quality tests read the shared data set beside the checkout.
data="${ENGRAM_SHARED_DATA:-../shared/data}/minilm-dev/base.fvecs"
[ -f "$data" ] || { echo "error: $data not found: the tests need ../shared/data beside the checkout" >&2; exit 1; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --profile ci -- -D warnings

# Index work in a debug build is 10-50x slower: tests run in the optimized
# `ci` profile, which keeps debug assertions and overflow checks.
step "cargo test (profile ci)"
cargo test --workspace --profile ci 2>&1 | tee "${TMPDIR:-/tmp}/engram-test.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

summary=$(grep -E '^test result:' "${TMPDIR:-/tmp}/engram-test.log" | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed", p, f}')
echo
echo "rust: $summary"
