"""The committed gRPC stubs match what generate.py makes from proto/ now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("engram_generate", PACKAGE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["engram_generate"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    gen = _load_generator()
    written = gen.generate(tmp_path)  # type: ignore[attr-defined]
    committed_root = PACKAGE / "engram_grpc" / "_proto"
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in written}
    committed = {
        p.relative_to(committed_root).as_posix(): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(committed) == sorted(fresh), "generated file set differs: run clients/python/generate.sh"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run clients/python/generate.sh and commit the result"


def test_generated_imports_are_package_relative() -> None:
    for path in (PACKAGE / "engram_grpc" / "_proto").rglob("*.py*"):
        text = path.read_text()
        assert "from engram.v1 import" not in text, f"{path} imports engram.v1 absolutely"
