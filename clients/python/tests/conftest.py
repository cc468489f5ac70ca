"""Fixtures: a real engram server (``$ENGRAM_BIN``, default
``target/ci/engram`` under the repository root) on free ports in a temporary
data directory."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
_LISTENING = re.compile(r'listening listener="(?P<name>\w+)" addr=(?P<addr>\S+)')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
START_TIMEOUT = 30.0


def engram_bin() -> Path:
    raw = os.environ.get("ENGRAM_BIN", "target/ci/engram")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"engram server binary not found at {path}: build it (cargo build --profile ci --bin engram) "
            "or set ENGRAM_BIN to its path"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Polls ``condition`` until it holds; fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class EngramServer:
    """One ``engram serve`` process; restartable on the same data dir and ports."""

    def __init__(self, data_dir: Path, args: List[str], grpc_port: int = 0, http_port: int = 0) -> None:
        self.data_dir = data_dir
        self.args = args
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.grpc_addr = ""
        self.http_addr = ""
        self.proc: Optional[subprocess.Popen[str]] = None
        self.log: List[str] = []
        self._reader: Optional[threading.Thread] = None

    @property
    def target(self) -> str:
        return self.grpc_addr

    def start(self) -> "EngramServer":
        cmd = [
            str(engram_bin()),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--grpc-addr",
            f"127.0.0.1:{self.grpc_port}",
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            *self.args,
        ]
        self.grpc_addr = self.http_addr = ""
        addrs: Dict[str, str] = {}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = _ANSI.sub("", line.rstrip("\n"))
                self.log.append(line)
                m = _LISTENING.search(line)
                if m:
                    addrs[m.group("name")] = m.group("addr")

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        try:
            wait_for(
                lambda: ("grpc" in addrs and "http" in addrs) or proc.poll() is not None,
                START_TIMEOUT,
                "the server's listening lines",
            )
            if proc.poll() is not None:
                raise AssertionError(f"engram exited with {proc.returncode}:\n" + "\n".join(self.log[-30:]))
            self.grpc_addr, self.http_addr = addrs["grpc"], addrs["http"]
            wait_for(self.ready, START_TIMEOUT, "/health/ready")
        except BaseException:
            self.kill()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_addr}/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def post(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            f"http://{self.http_addr}{path}", data=data, method="POST", headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.http_addr}{path}", timeout=10) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final snapshot."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: orderly shutdown."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.proc = None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngramServer]:
    """A shared server (tests use their own spaces)."""
    srv = EngramServer(tmp_path_factory.mktemp("engram-shared"), ["--wal-sync", "interval"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., EngramServer]]:
    """Starts dedicated servers (``make_server(*args, grpc_port=, http_port=)``);
    kills them at the end of the test."""
    started: List[EngramServer] = []

    def make(*args: str, grpc_port: int = 0, http_port: int = 0, data_dir: Optional[Path] = None) -> EngramServer:
        srv = EngramServer(data_dir or tmp_path / f"data-{len(started)}", list(args), grpc_port, http_port)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def space() -> str:
    """A fresh space id."""
    return f"t-{uuid.uuid4().hex[:12]}"
