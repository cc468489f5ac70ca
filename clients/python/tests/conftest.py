"""Fixtures: a real engram server (``$ENGRAM_BIN``, default
``target/ci/engram`` under the repository root) on free ports in a temporary
data directory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

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
    """One ``engram serve`` process; restartable on the same data dir and ports.

    ``ca_file``: the CA that signed the server's certificate, for a server
    started with ``--tls-cert``/``--tls-key`` (its HTTP port then speaks TLS
    too, so the readiness check and :meth:`get`/:meth:`post` use https)."""

    def __init__(
        self, data_dir: Path, args: List[str], grpc_port: int = 0, http_port: int = 0, ca_file: Optional[Path] = None
    ) -> None:
        self.data_dir = data_dir
        self.args = args
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.ca_file = ca_file
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        self.grpc_addr = ""
        self.http_addr = ""
        self.proc: Optional[subprocess.Popen[str]] = None
        self.log: List[str] = []
        self._reader: Optional[threading.Thread] = None

    @property
    def target(self) -> str:
        return self.grpc_addr

    @property
    def http_base(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self.http_addr}"

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
            with urllib.request.urlopen(f"{self.http_base}/health/ready", timeout=2, context=self._ssl) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def post(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            f"{self.http_base}{path}", data=data, method="POST", headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10, context=self._ssl) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.http_base}{path}", timeout=10, context=self._ssl) as r:
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
    """Starts dedicated servers (``make_server(*args, grpc_port=, http_port=,
    ca_file=)``); kills them at the end of the test."""
    started: List[EngramServer] = []

    def make(
        *args: str,
        grpc_port: int = 0,
        http_port: int = 0,
        data_dir: Optional[Path] = None,
        ca_file: Optional[Path] = None,
    ) -> EngramServer:
        srv = EngramServer(data_dir or tmp_path / f"data-{len(started)}", list(args), grpc_port, http_port, ca_file)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def space() -> str:
    """A fresh space id."""
    return f"t-{uuid.uuid4().hex[:12]}"


# ----- security (API keys, TLS) -----


def key_hash(key: str) -> str:
    """A keys file's ``hash`` for ``key``: ``sha256:`` + the hex SHA-256 of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def write_keys_file(path: Path, keys: Dict[str, Tuple[str, List[str], List[str]]]) -> Path:
    """Writes a keys file: ``{name: (key, roles, spaces)}``."""
    lines: List[str] = []
    for name, (key, roles, spaces) in keys.items():
        lines += [
            "[[keys]]",
            f"name = {json.dumps(name)}",
            f"hash = {json.dumps(key_hash(key))}",
            f"roles = {json.dumps(roles)}",
            f"spaces = {json.dumps(spaces)}",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


class TlsFiles:
    """``engram tls generate`` output: a CA and a server certificate (for
    localhost, 127.0.0.1 and ::1) signed by it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.pem"
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()

    @property
    def server_args(self) -> List[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def generate_tls(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(engram_bin()), "tls", "generate", "--dir", str(directory)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise AssertionError(f"engram tls generate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    files = TlsFiles(directory)
    for f in (files.ca, files.cert, files.key):
        assert f.is_file(), f"engram tls generate did not write {f}"
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls(tmp_path_factory.mktemp("engram-tls"))
