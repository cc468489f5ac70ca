#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (crates/engram-fuzz: WAL records
# and segments, snapshots, WebSocket JSON, protobuf conversions) for
# FUZZ_SECS seconds each, from the committed seed corpus, and fails loudly
# on any crash. Stable toolchain, no coverage instrumentation: see
# crates/engram-fuzz/README.md.
#
#   scripts/fuzz.sh                        every target, 20 s each
#   FUZZ_SECS=300 scripts/fuzz.sh          longer
#   FUZZ_SEED=123 scripts/fuzz.sh          repeat a run (the seed is printed)
#   scripts/fuzz.sh --target ws_json       extra arguments go to engram-fuzz
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || { echo "error: 'cargo' is required: install the Rust toolchain from https://rustup.rs" >&2; exit 1; }

cargo build --profile ci -p engram-fuzz
args=(--secs "${FUZZ_SECS:-20}")
if [ -n "${FUZZ_SEED:-}" ]; then
  args+=(--seed "$FUZZ_SEED")
fi

set +e
target/ci/engram-fuzz "${args[@]}" "$@"
status=$?
set -e

case "$status" in
  0) exit 0 ;;
  2) echo "error: engram-fuzz refused its command line (usage above)" >&2; exit 2 ;;
  1) why="a target panicked or hung" ;;
  3) why="an input ran for over 10 s (the watchdog stopped the run)" ;;
  134) why="a target allocated over 256 MiB at once (the guard aborted the run)" ;;
  *) why="engram-fuzz exited with status $status" ;;
esac
echo >&2
echo "FUZZING FAILED: $why." >&2
echo "The input is saved under crates/engram-fuzz/crashes/; the output above says how to reproduce it," >&2
echo "and crates/engram-fuzz/README.md how to turn it into a regression test." >&2
exit 1
