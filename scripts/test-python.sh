#!/usr/bin/env bash
# Tests the Python client (clients/python): installs it with its test extra
# into .venv-clients/python, type-checks it (mypy --strict), runs its pytest
# suite against a real server and runs examples/streaming/python_client.py
# against a server started here on free ports.
#
#   scripts/test-python.sh
#
# ENGRAM_BIN: the server binary (default target/ci/engram, built by
# `cargo build --profile ci --bin engram`). PYTHON: the interpreter to make
# the virtualenv with (default python3, >= 3.10). Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

die() {
    echo "test-python.sh: error: $*" >&2
    exit 1
}

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3.10+ (apt-get install python3 python3-venv python3-pip)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$python is $("$python" --version 2>&1); the client needs Python 3.10+"
"$python" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$python cannot create virtualenvs (no venv/ensurepip): apt-get install python3-venv"

engram_bin=${ENGRAM_BIN:-target/ci/engram}
case "$engram_bin" in /*) ;; *) engram_bin="$root/$engram_bin" ;; esac
[ -x "$engram_bin" ] ||
    die "engram server binary not found at $engram_bin: build it with 'cargo build --profile ci --bin engram' or set ENGRAM_BIN"
export ENGRAM_BIN="$engram_bin"

venv="$root/.venv-clients/python"
if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    "$python" -m venv "$venv" || die "could not create the virtualenv $venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip --version >/dev/null 2>&1 || die "pip is missing in $venv: apt-get install python3-pip, then remove $venv"

echo "==> pip install ./clients/python[test]"
"$vpy" -m pip install --quiet "./clients/python[test]"
# A plain (non-editable) install of the current sources: the tests import
# the installed package, so packaging mistakes (missing stubs, py.typed) show.
"$vpy" -m pip install --quiet --no-deps --force-reinstall ./clients/python

echo "==> mypy --strict (clients/python/engram_grpc)"
(cd clients/python && "$vpy" -m mypy --strict)

echo "==> pytest (ENGRAM_BIN=$ENGRAM_BIN)"
(cd clients/python && "$venv/bin/pytest" -ra --durations=5 "$@")

echo "==> pip install ./clients/python into a fresh virtualenv"
fresh=$(mktemp -d)
"$python" -m venv "$fresh/venv" || die "could not create a fresh virtualenv"
"$fresh/venv/bin/python" -m pip install --quiet ./clients/python || die "pip install ./clients/python failed in a fresh virtualenv"
(cd "$fresh" && "$fresh/venv/bin/python" -c 'import engram_grpc; assert callable(engram_grpc.StreamingClient); print("fresh install: engram_grpc", engram_grpc.__name__, "imports")') ||
    die "engram_grpc does not import after a fresh install"
rm -rf "$fresh"

echo "==> example: examples/streaming/python_client.py"
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
read -r grpc_port http_port < <("$vpy" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
"$ENGRAM_BIN" serve --data-dir "$work/data" --grpc-addr "127.0.0.1:$grpc_port" \
    --http-addr "127.0.0.1:$http_port" 2>"$work/server.log" &
server_pid=$!
ready=""
for _ in $(seq 300); do
    if "$vpy" -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$http_port/health/ready', timeout=1).status != 200)" 2>/dev/null; then
        ready=1
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ready" ]; then
    cat "$work/server.log" >&2
    die "the example's server did not become ready within 30 s"
fi
"$vpy" examples/streaming/python_client.py --target "127.0.0.1:$grpc_port" --space example ||
    die "the example failed"

echo "==> Python client: all checks passed"
