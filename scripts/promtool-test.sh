#!/usr/bin/env bash
# Checks the Prometheus artefacts under deployments/prometheus with promtool:
#
#   1. promtool check rules   deployments/prometheus/alerts/streaming.yml
#   2. promtool check config  deployments/prometheus/prometheus.yml, and the
#      local stack's deployments/observability/prometheus.yml
#   3. promtool test rules    deployments/prometheus/tests/streaming_test.yml
#   4. coverage: every alert of the rule file has, in the test file, at least
#      one case where it fires and one where it does not.
#
# Installs the Debian package `prometheus` (it ships promtool) when promtool
# is missing; fails loudly when it cannot. Exits non-zero on any failure.
# The last line is `promtool: N passed, M failed`, where N + M counts the
# three file checks, every alert test case (one `eval_time` entry of the test
# file) and the coverage check of every alert.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=deployments/prometheus/alerts/streaming.yml
config=deployments/prometheus/prometheus.yml
tests=deployments/prometheus/tests/streaming_test.yml

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing the Debian package 'prometheus' (it provides promtool)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: promtool missing and not root (no sudo): apt-get install prometheus" >&2; exit 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "error: promtool missing and no apt-get: install Prometheus' promtool (https://prometheus.io/download/)" >&2; exit 1; }
  $sudo apt-get update -qq || { echo "error: apt-get update failed" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus \
    || { echo "error: apt-get install prometheus failed" >&2; exit 1; }
  command -v promtool >/dev/null 2>&1 || { echo "error: promtool still not found after installing prometheus" >&2; exit 1; }
fi
promtool --version 2>&1 | head -n 1

passed=0
failed=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

run_check() { # name, command...
  local name=$1
  shift
  printf '\n==> %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "FAILED: $name" >&2
    failed=$((failed + 1))
  fi
}

run_check "promtool check rules $rules" promtool check rules "$rules"
run_check "promtool check config $config" promtool check config "$config"
stack=deployments/observability/prometheus.yml
run_check "promtool check config $stack" promtool check config "$stack"

# promtool test rules reports the whole file; count its cases (one per
# eval_time entry) and the failing ones (each reported with "alertname: X,
# time: T," by promtool).
cases=$(grep -cE '^[[:space:]]*-[[:space:]]*eval_time:' "$tests" || true)
[ "$cases" -gt 0 ] || { echo "error: no alert test cases in $tests" >&2; exit 1; }
printf '\n==> promtool test rules %s (%d cases)\n' "$tests" "$cases"
if promtool test rules "$tests" >"$log" 2>&1; then
  cat "$log"
  passed=$((passed + cases))
else
  cat "$log"
  bad=$(grep -cE '^[[:space:]]*alertname: [A-Za-z0-9_]+, time: ' "$log" || true)
  # An error that is not a failing case (syntax, missing file) fails them all.
  [ "$bad" -gt 0 ] || bad=$cases
  failed=$((failed + bad))
  passed=$((passed + cases - bad))
fi

# Coverage: each alert of the rule file needs a firing case (non-empty
# exp_alerts) and a non-firing case (exp_alerts: []) in the test file.
printf '\n==> every alert has a firing and a non-firing test case\n'
coverage="$(python3 - "$rules" "$tests" <<'PY'
import re
import sys

rules, tests = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
alerts = re.findall(r"^\s*-\s*alert:\s*([A-Za-z0-9_]+)\s*$", rules, re.M)
fires, quiet = set(), set()
# Each case: "alertname: X" then "exp_alerts:" with "[]" (quiet) or a list.
for m in re.finditer(r"alertname:\s*([A-Za-z0-9_]+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", tests):
    (quiet if m.group(2) else fires).add(m.group(1))
for a in alerts:
    missing = [k for k, s in (("firing", fires), ("not firing", quiet)) if a not in s]
    print(("FAIL " if missing else "ok   ") + a + (" (no case: " + ", ".join(missing) + ")" if missing else ""))
unknown = (fires | quiet) - set(alerts)
for a in sorted(unknown):
    print("FAIL " + a + " is tested but not in the rule file")
if not alerts:
    print("FAIL no alerts found in " + sys.argv[1])
PY
)"
echo "$coverage"
passed=$((passed + $(grep -c '^ok ' <<<"$coverage" || true)))
failed=$((failed + $(grep -c '^FAIL ' <<<"$coverage" || true)))

echo
echo "promtool: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
