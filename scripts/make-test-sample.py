#!/usr/bin/env python3
"""Cuts the real-text test sample shipped in the repository from minilm-dev.

    python3 scripts/make-test-sample.py [SOURCE_DIR] [OUT_DIR]

SOURCE_DIR defaults to ../shared/data/minilm-dev (beside the checkout), OUT_DIR
to crates/engram-testdata/data/minilm-sample. The sample is a plain prefix
of the source set, copied byte for byte:

  base.fvecs   records 0..3000 of base.fvecs (3,000 x 384 float32)
  base.txt     lines 0..3000 of base.txt
  query.fvecs  records 0..200 of query.fvecs (200 x 384 float32)
  query.txt    lines 0..200 of query.txt

The ground truth is not copied: it was computed against all 20,000 base
vectors, and the tests compute the exact ground truth of the sample
themselves. Standard library only; the output depends on nothing but the
source files (no randomness, no timestamps), so rerunning it reproduces the
committed files exactly. It prints each file's size and SHA-256, which
crates/engram-testdata/data/minilm-sample/README.md lists.
"""

import hashlib
import struct
import sys
from pathlib import Path

BASE_ROWS = 3000
QUERY_ROWS = 200
DIM = 384
RECORD = 4 * (DIM + 1)

ROOT = Path(__file__).resolve().parent.parent


def fvecs_prefix(path: Path, rows: int) -> bytes:
    data = path.read_bytes()
    if len(data) % RECORD != 0:
        sys.exit(f"{path}: {len(data)} bytes is not a multiple of {RECORD}")
    if len(data) // RECORD < rows:
        sys.exit(f"{path}: {len(data) // RECORD} records, fewer than {rows}")
    out = data[: rows * RECORD]
    for i in range(rows):
        (d,) = struct.unpack_from("<i", out, i * RECORD)
        if d != DIM:
            sys.exit(f"{path}: record {i} has dimension {d}, expected {DIM}")
    return out


def text_prefix(path: Path, rows: int) -> bytes:
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < rows:
        sys.exit(f"{path}: {len(lines)} lines, fewer than {rows}")
    out = lines[:rows]
    for i, line in enumerate(out):
        line.decode("utf-8")  # raises on invalid UTF-8
        if b"\r" in line:
            sys.exit(f"{path}: line {i} holds a carriage return")
    return b"\n".join(out) + b"\n"


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/minilm-dev"
    dst = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else ROOT / "crates/engram-testdata/data/minilm-sample"
    )
    if not (src / "base.fvecs").is_file():
        sys.exit(f"{src}/base.fvecs not found: pass the minilm-dev folder as the first argument")
    files = {
        "base.fvecs": fvecs_prefix(src / "base.fvecs", BASE_ROWS),
        "base.txt": text_prefix(src / "base.txt", BASE_ROWS),
        "query.fvecs": fvecs_prefix(src / "query.fvecs", QUERY_ROWS),
        "query.txt": text_prefix(src / "query.txt", QUERY_ROWS),
    }
    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, data in files.items():
        (dst / name).write_bytes(data)
        total += len(data)
        print(f"{hashlib.sha256(data).hexdigest()}  {len(data):>9}  {name}")
    print(f"wrote {total} bytes to {dst}")


if __name__ == "__main__":
    main()
