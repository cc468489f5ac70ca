# Sourced by the benchmark scripts (bench_index.sh, bench_memory.sh,
# bench_streaming.sh): makes sure the Python environment $VENV exists with
# numpy and hnswlib (the baseline every index figure is compared with), and
# sets PY to its python.
# Expects the caller's `step` and `die` functions.

if [ ! -x "$VENV/bin/python" ]; then
  step "creating Python environment $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import numpy, hnswlib' 2>/dev/null; then
  step "installing numpy and hnswlib into $VENV"
  "$VENV/bin/pip" install --quiet numpy hnswlib || die "pip install numpy hnswlib failed (hnswlib builds from source: needs g++)"
fi

# The benchmarks that drive a real server from Python (bench_memory.sh,
# bench_streaming.sh) call this: the client, with the test extras whose
# server fixture they use to start `engram serve`.
install_python_client() {
  step "installing the Python client into $VENV"
  "$VENV/bin/pip" install --quiet "./clients/python[test]" \
    || die "pip install ./clients/python[test] failed (its test fixture starts the server)"
}
