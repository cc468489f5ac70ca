#!/usr/bin/env bash
# Regenerates engram_grpc/_proto from proto/ (needs the test extra:
# pip install './clients/python[test]'). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" generate.py "$@"
