"""API keys and TLS (issue #12): a real server started with a keys file and
a certificate from ``engram tls generate``; plus one in-process fake server
that records the metadata of every call, reconnects included."""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import signal
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional, Tuple

import grpc
import grpc.aio
import pytest

import engram_grpc as eg
from conftest import EngramServer, TlsFiles, write_keys_file
from engram_grpc._proto.engram.v1 import (
    memory_pb2,
    memory_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
    types_pb2,
)
from helpers import TcpProxy, unit_vector, until

DIM = 8
# Fresh secrets per run; tests assert they never reach the server's log.
ADMIN_KEY = "ek_admin_" + secrets.token_urlsafe(24)
ALPHA_KEY = "ek_alpha_" + secrets.token_urlsafe(24)  # read+write on sec-a-*
BETA_KEY = "ek_beta_" + secrets.token_urlsafe(24)  # read+write on sec-b-*
READER_KEY = "ek_reader_" + secrets.token_urlsafe(24)  # read on sec-a-*
KEYS = {
    "admin": (ADMIN_KEY, ["admin"], ["*"]),
    "alpha": (ALPHA_KEY, ["read", "write"], ["sec-a-*"]),
    "beta": (BETA_KEY, ["read", "write"], ["sec-b-*"]),
    "alpha-reader": (READER_KEY, ["read"], ["sec-a-*"]),
}
#: Failing connections give up quickly.
FAST_FAIL = eg.ClientOptions(connect_timeout=2.0, unary_timeout=5.0)
_TLS_FAILURE = re.compile(r"ssl|tls|handshake|certificate|hostname", re.IGNORECASE)


def vec(i: int) -> List[float]:
    v = [0.0] * DIM
    v[i % DIM] = 1.0
    return v


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[EngramServer]:
    """A server with API keys and TLS on both ports."""
    base = tmp_path_factory.mktemp("engram-secure")
    keys = write_keys_file(base / "keys.toml", KEYS)
    srv = EngramServer(
        base / "data",
        ["--wal-sync", "interval", "--api-keys", str(keys), *tls_files.server_args],
        ca_file=tls_files.ca,
    ).start()
    yield srv
    srv.stop()
    log = "\n".join(srv.log)
    for key in (ADMIN_KEY, ALPHA_KEY, BETA_KEY, READER_KEY):
        assert key not in log, "an API key appeared in the server's log"


@pytest.fixture
def alpha_space() -> str:
    return f"sec-a-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def beta_space() -> str:
    return f"sec-b-{uuid.uuid4().hex[:12]}"


def secure_client(srv: EngramServer, ca: bytes, key: Optional[str], space: str = "default", **kw: Any) -> eg.StreamingClient:
    return eg.StreamingClient(srv.target, space=space, tls=True, root_certificates=ca, api_key=key, **kw)


async def make_space(srv: EngramServer, ca: bytes, space: str) -> None:
    async with secure_client(srv, ca, ADMIN_KEY, space) as admin:
        await admin.create_space(dimension=DIM)


async def test_tls_and_key_round_trip(secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str) -> None:
    rng = random.Random(12)
    async with secure_client(secure_server, tls_files.ca_pem, ALPHA_KEY, alpha_space) as client:
        info = await client.create_space(dimension=DIM)
        assert info.memory_space_id == alpha_space and info.dimension == DIM
        ack = await asyncio.wait_for(client.observe({"id": "first", "what": "over tls", "embedding": vec(0)}), 10)
        assert ack.memory_id == "first" and ack.server_sequence == 1
        answers = [a async for a in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(50))]
        assert len(answers) == 50 and all(a.accepted for a in answers)
        top = await client.recall({"embedding": vec(0), "max_results": 3})
        assert top.memories[0].memory_id == "first" and top.memories[0].episode.what == "over tls"
        batches = [b async for b in client.recall_stream({"embedding": vec(0), "max_results": 10}, batch_size=4)]
        assert [len(b.memories) for b in batches] == [4, 4, 2] and not batches[-1].more
        remembered = await client.remember({"id": "unary", "embedding": vec(1)})
        assert remembered.memory_id == "unary" and not remembered.duplicate
        described = await client.describe_space()
        assert described.count == 52 and described.dimension == DIM
        assert alpha_space in {s.memory_space_id for s in await client.list_spaces()}
        await client.forget("first")
        after = await client.recall({"embedding": vec(0), "max_results": 3})
        assert "first" not in {m.memory_id for m in after.memories}
        closed = await client.close_space()
        assert closed is not None and closed.accepted == 51 and closed.rejected == 0
        # Deleting a space takes admin.
        with pytest.raises(eg.PermissionDenied):
            await client.delete_space(alpha_space)
    async with secure_client(secure_server, tls_files.ca_pem, ADMIN_KEY) as admin:
        await admin.delete_space(alpha_space)
        with pytest.raises(eg.NotFound):
            await admin.describe_space(alpha_space)


async def test_https_target_and_server_name(secure_server: EngramServer, tls_files: TlsFiles) -> None:
    port = secure_server.target.rsplit(":", 1)[1]
    ca = tls_files.ca_pem
    # https:// means TLS; the certificate names localhost, 127.0.0.1 and ::1.
    async with eg.StreamingClient(f"https://127.0.0.1:{port}", root_certificates=ca, api_key=ADMIN_KEY) as client:
        await client.list_spaces()
    async with eg.StreamingClient(
        f"grpcs://127.0.0.1:{port}", root_certificates=ca, api_key=ADMIN_KEY, tls_server_name="localhost"
    ) as client:
        await client.list_spaces()
    # A name the certificate does not carry fails the handshake.
    client = eg.StreamingClient(
        f"https://127.0.0.1:{port}", root_certificates=ca, tls_server_name="other.example", options=FAST_FAIL
    )
    try:
        with pytest.raises(eg.Unavailable) as failed:
            await client.connect()
        assert _TLS_FAILURE.search(str(failed.value)), str(failed.value)
    finally:
        await client.close()


async def test_missing_key_is_unauthenticated(secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str) -> None:
    await make_space(secure_server, tls_files.ca_pem, alpha_space)
    # Connecting needs no key (the channel and the health service are open).
    async with secure_client(secure_server, tls_files.ca_pem, None, alpha_space) as client:
        for call in (
            client.list_spaces(),
            client.describe_space(),
            client.recall(vec(0)),
            client.remember({"embedding": vec(0)}),
            client.create_space(dimension=DIM),
        ):
            with pytest.raises(eg.Unauthenticated) as refused:
                await call
            assert refused.value.message and refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(eg.Unauthenticated):
            [b async for b in client.recall_stream(vec(0))]
        # The observe stream is refused when it opens; nothing is retried.
        with pytest.raises(eg.Unauthenticated):
            await asyncio.wait_for(client.observe({"embedding": vec(0)}), 10)


async def test_wrong_key_is_unauthenticated(secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str) -> None:
    await make_space(secure_server, tls_files.ca_pem, alpha_space)
    wrong = "ek_" + secrets.token_urlsafe(24)
    async with secure_client(secure_server, tls_files.ca_pem, wrong, alpha_space) as client:
        with pytest.raises(eg.Unauthenticated) as refused:
            await client.list_spaces()
        assert wrong not in refused.value.message
        with pytest.raises(eg.Unauthenticated):
            await client.recall(vec(0))
        with pytest.raises(eg.Unauthenticated):
            await asyncio.wait_for(client.observe({"embedding": vec(0)}), 10)
    assert wrong not in "\n".join(secure_server.log)


async def test_key_for_another_space(
    secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str, beta_space: str
) -> None:
    await make_space(secure_server, tls_files.ca_pem, alpha_space)
    await make_space(secure_server, tls_files.ca_pem, beta_space)
    events: List[eg.SessionEvent] = []
    async with secure_client(
        secure_server, tls_files.ca_pem, BETA_KEY, alpha_space, on_event=events.append
    ) as client:
        # Unary calls on a space the key does not cover: PERMISSION_DENIED.
        for call in (
            client.describe_space(),
            client.recall(vec(0)),
            client.remember({"embedding": vec(0)}),
            client.forget("anything"),
            client.create_space(dimension=DIM),
        ):
            with pytest.raises(eg.PermissionDenied) as denied:
                await call
            assert denied.value.message and denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(eg.PermissionDenied):
            [b async for b in client.recall_stream(vec(0))]
        # On the observe stream (bound to alpha_space at init) the
        # observation is rejected, not retried, and the stream goes on.
        with pytest.raises(eg.Rejected) as rejected:
            await asyncio.wait_for(client.observe({"id": "denied-1", "embedding": vec(0)}), 10)
        assert rejected.value.reason == eg.RejectReason.UNAUTHORIZED
        assert rejected.value.rejection.retries == 0 and rejected.value.message
        stats = client.session_stats()
        assert stats is not None and stats.connected and stats.rejected == 1 and stats.retries == 0
        session_id = stats.session_id
        answers = [a async for a in client.observe_many({"embedding": vec(i)} for i in range(3))]
        assert [(a.accepted, getattr(a, "reason", None)) for a in answers] == [(False, eg.RejectReason.UNAUTHORIZED)] * 3
        assert [a.sequence_number for a in answers] == [2, 3, 4]
        assert stats.session_id == session_id and stats.connected and stats.reconnects == 0
        assert not any(isinstance(e, (eg.Retrying, eg.Disconnected)) for e in events)
        # The same client still works where the key reaches.
        assert (await client.describe_space(beta_space)).memory_space_id == beta_space
        ack = await asyncio.wait_for(client.observe({"embedding": vec(1)}, space=beta_space), 10)
        assert ack.accepted
        closed = await client.close_space()
        assert closed is not None and closed.accepted == 0 and closed.rejected == 4
    async with secure_client(secure_server, tls_files.ca_pem, ADMIN_KEY, alpha_space) as admin:
        assert (await admin.describe_space()).count == 0


async def test_list_spaces_shows_only_covered_spaces(
    secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str, beta_space: str
) -> None:
    ca = tls_files.ca_pem
    await make_space(secure_server, ca, alpha_space)
    await make_space(secure_server, ca, beta_space)

    async def listed(key: str) -> set[str]:
        async with secure_client(secure_server, ca, key) as client:
            return {s.memory_space_id for s in await client.list_spaces()}

    alpha, beta, reader, admin = [await listed(k) for k in (ALPHA_KEY, BETA_KEY, READER_KEY, ADMIN_KEY)]
    assert alpha_space in alpha and beta_space not in alpha and all(s.startswith("sec-a-") for s in alpha)
    assert beta_space in beta and alpha_space not in beta and all(s.startswith("sec-b-") for s in beta)
    assert reader == alpha
    assert {alpha_space, beta_space} <= admin


async def test_read_only_key(secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str) -> None:
    ca = tls_files.ca_pem
    async with secure_client(secure_server, ca, ALPHA_KEY, alpha_space) as writer:
        await writer.create_space(dimension=DIM)
        await asyncio.wait_for(writer.observe({"id": "w1", "embedding": vec(2)}), 10)
    async with secure_client(secure_server, ca, READER_KEY, alpha_space) as reader:
        # Reading works.
        assert (await reader.recall(vec(2))).memories[0].memory_id == "w1"
        assert [len(b.memories) async for b in reader.recall_stream(vec(2))] == [1]
        assert (await reader.describe_space()).count == 1
        assert alpha_space in {s.memory_space_id for s in await reader.list_spaces()}
        # Writing does not.
        with pytest.raises(eg.PermissionDenied):
            await reader.remember({"embedding": vec(3)})
        with pytest.raises(eg.PermissionDenied):
            await reader.forget("w1")
        with pytest.raises(eg.PermissionDenied):
            await reader.create_space(f"sec-a-{uuid.uuid4().hex[:8]}", dimension=DIM)
        with pytest.raises(eg.PermissionDenied):
            await reader.delete_space(alpha_space)
        with pytest.raises(eg.Rejected) as rejected:
            await asyncio.wait_for(reader.observe({"embedding": vec(3)}), 10)
        assert rejected.value.reason == eg.RejectReason.UNAUTHORIZED
        assert (await reader.describe_space()).count == 1


async def test_tls_without_the_ca_fails_clearly(secure_server: EngramServer) -> None:
    # tls=True without root_certificates trusts the system's roots, which
    # did not sign the server's certificate.
    client = eg.StreamingClient(secure_server.target, tls=True, api_key=ADMIN_KEY, options=FAST_FAIL)
    try:
        with pytest.raises(eg.Unavailable) as failed:
            await client.connect()
        assert _TLS_FAILURE.search(str(failed.value)), str(failed.value)
        with pytest.raises(eg.Unavailable) as unary:
            await client.list_spaces()
        assert _TLS_FAILURE.search(unary.value.message), unary.value.message
    finally:
        await client.close()


async def test_plaintext_client_against_tls_server_fails(secure_server: EngramServer) -> None:
    client = eg.StreamingClient(secure_server.target, api_key=ADMIN_KEY, options=FAST_FAIL)
    try:
        with pytest.raises(eg.Unavailable):
            await client.connect()
        with pytest.raises(eg.Unavailable):
            await client.list_spaces()
    finally:
        await client.close()


async def test_tls_client_against_plaintext_server_fails(server: EngramServer, tls_files: TlsFiles, space: str) -> None:
    client = eg.StreamingClient(server.target, tls=True, root_certificates=tls_files.ca_pem, options=FAST_FAIL)
    try:
        with pytest.raises(eg.Unavailable):
            await client.connect()
    finally:
        await client.close()
    # A key sent to a server without keys is harmless.
    async with eg.StreamingClient(server.target, space=space, api_key=ALPHA_KEY) as plain:
        assert (await asyncio.wait_for(plain.observe({"embedding": vec(0)}), 10)).accepted


async def test_key_is_sent_again_when_the_stream_resumes(
    secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str
) -> None:
    await make_space(secure_server, tls_files.ca_pem, alpha_space)
    proxy = await TcpProxy(secure_server.target).start()
    events: List[eg.SessionEvent] = []
    try:
        async with eg.StreamingClient(
            proxy.address,
            space=alpha_space,
            tls=True,
            root_certificates=tls_files.ca_pem,
            api_key=ALPHA_KEY,
            reconnect=eg.BackoffPolicy(initial=0.05, max=0.2),
            on_event=events.append,
        ) as client:
            for i in range(5):
                assert (await asyncio.wait_for(client.observe({"embedding": vec(i)}), 10)).accepted
            proxy.sever()
            for i in range(5, 10):
                assert (await asyncio.wait_for(client.observe({"embedding": vec(i)}), 30)).accepted
            stats = client.session_stats()
            assert stats is not None and stats.reconnects >= 1
            assert any(isinstance(e, eg.Reconnected) for e in events)
            # Unary calls on the new connection carry the key too.
            assert (await client.describe_space()).count == 10
    finally:
        await proxy.close()


def test_sync_client_with_key_and_tls(secure_server: EngramServer, tls_files: TlsFiles, alpha_space: str) -> None:
    ca = tls_files.ca_pem
    options = eg.ClientOptions(tls=True, root_certificates=ca, api_key=ALPHA_KEY)
    with eg.Client(secure_server.target, space=alpha_space, options=options) as client:
        assert client.create_space(dimension=DIM).dimension == DIM
        assert client.observe({"id": "sync-1", "embedding": vec(4)}).accepted
        assert client.recall(vec(4)).memories[0].memory_id == "sync-1"
        with pytest.raises(eg.PermissionDenied):
            client.describe_space("sec-b-elsewhere")
    with eg.Client(secure_server.target, space=alpha_space, tls=True, root_certificates=ca) as anonymous:
        with pytest.raises(eg.Unauthenticated):
            anonymous.recall(vec(4))
    with pytest.raises(eg.Unavailable):
        eg.Client(secure_server.target, space=alpha_space, api_key=ALPHA_KEY, connect_timeout=1.0)


async def test_keys_file_reload_on_sighup(make_server: Callable[..., EngramServer], tls_files: TlsFiles, tmp_path: Path) -> None:
    """A key added to the keys file works after SIGHUP; an open stream of
    another key is not dropped."""
    keys_path = write_keys_file(tmp_path / "keys.toml", {"alpha": KEYS["alpha"]})
    srv = make_server("--api-keys", str(keys_path), *tls_files.server_args, ca_file=tls_files.ca)
    space = f"sec-a-{uuid.uuid4().hex[:12]}"
    ca = tls_files.ca_pem
    async with secure_client(srv, ca, ALPHA_KEY, space) as alpha, secure_client(srv, ca, BETA_KEY) as beta:
        assert (await asyncio.wait_for(alpha.observe({"embedding": vec(0)}), 10)).accepted
        with pytest.raises(eg.Unauthenticated):
            await beta.list_spaces()
        write_keys_file(keys_path, {"alpha": KEYS["alpha"], "beta": KEYS["beta"]})
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)

        async def beta_accepted() -> bool:
            try:
                await beta.list_spaces()
                return True
            except eg.Unauthenticated:
                return False

        await until(beta_accepted, 10, "the reloaded key to be accepted")
        session = alpha.session_stats()
        assert session is not None
        before = session.session_id
        assert (await asyncio.wait_for(alpha.observe({"embedding": vec(1)}), 10)).accepted
        assert session.session_id == before and session.reconnects == 0


# ----- the metadata of every call, against an in-process fake server -----


class _Recorder:
    def __init__(self) -> None:
        #: (method, authorization metadata, resume_session_id for ObserveStream)
        self.calls: List[Tuple[str, Optional[str], str]] = []

    def record(self, context: Any, method: str, resume: str = "") -> None:
        auth = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                auth = value if isinstance(value, str) else value.decode()
        self.calls.append((method, auth, resume))


class _FakeMemory(memory_pb2_grpc.MemoryServicer):
    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec

    async def ListSpaces(self, request: memory_pb2.ListSpacesRequest, context: Any) -> memory_pb2.ListSpacesResponse:
        self.rec.record(context, "ListSpaces")
        return memory_pb2.ListSpacesResponse()

    async def Recall(self, request: types_pb2.RecallRequest, context: Any) -> types_pb2.RecallResponse:
        self.rec.record(context, "Recall")
        return types_pb2.RecallResponse()


class _FakeStreaming(streaming_pb2_grpc.StreamingServicer):
    """ObserveStream: the first stream breaks (UNAVAILABLE) right after its
    init_ack; the client then resumes the session on a second one."""

    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec
        self.streams = 0

    async def RecallStream(self, request: types_pb2.RecallRequest, context: Any) -> AsyncIterator[types_pb2.RecallResponse]:
        self.rec.record(context, "RecallStream")
        yield types_pb2.RecallResponse()

    async def ObserveStream(self, request_iterator: AsyncIterator[streaming_pb2.ObserveRequest], context: Any) -> AsyncIterator[streaming_pb2.ObserveResponse]:
        self.streams += 1
        first = self.streams == 1
        answered = 0
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "init":
                self.rec.record(context, "ObserveStream", req.init.resume_session_id)
                yield streaming_pb2.ObserveResponse(
                    init_ack=streaming_pb2.StreamInitAck(session_id="fake-session", last_acked_sequence=answered)
                )
                if first:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "fault injected: stream broken")
            elif kind == "observation":
                answered = req.observation.sequence_number
                yield streaming_pb2.ObserveResponse(
                    ack=streaming_pb2.ObservationAck(
                        sequence_number=answered,
                        status=streaming_pb2.ObservationAck.ACK_ACCEPTED,
                        memory_id=req.observation.episode.id,
                        server_sequence=answered,
                    )
                )
            elif kind == "close":
                yield streaming_pb2.ObserveResponse(
                    closed=streaming_pb2.StreamClosed(final_sequence=answered, accepted=answered)
                )
                return


async def test_key_is_sent_on_every_call_and_on_resume() -> None:
    rec = _Recorder()
    streaming = _FakeStreaming(rec)
    server = grpc.aio.server()
    memory_pb2_grpc.add_MemoryServicer_to_server(_FakeMemory(rec), server)
    streaming_pb2_grpc.add_StreamingServicer_to_server(streaming, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    key = "ek_" + secrets.token_urlsafe(16)
    try:
        async with eg.StreamingClient(
            f"127.0.0.1:{port}", space="s", api_key=key, reconnect=eg.BackoffPolicy(initial=0.01, max=0.05)
        ) as client:
            await client.list_spaces()
            await client.recall(vec(0))
            assert [r async for r in client.recall_stream(vec(0))]
            ack = await asyncio.wait_for(client.observe({"embedding": vec(0)}), 10)
            assert ack.accepted and ack.sequence_number == 1
            stats = client.session_stats()
            assert stats is not None and stats.reconnects == 1
            closed = await client.close_space()
            assert closed is not None and closed.accepted == 1
    finally:
        await server.stop(None)
    assert streaming.streams == 2
    assert [(m, r) for m, _, r in rec.calls] == [
        ("ListSpaces", ""),
        ("Recall", ""),
        ("RecallStream", ""),
        ("ObserveStream", ""),
        ("ObserveStream", "fake-session"),  # the resume
    ]
    assert all(auth == f"Bearer {key}" for _, auth, _ in rec.calls), rec.calls

    # Without a key no authorization metadata goes out.
    rec.calls.clear()
    server = grpc.aio.server()
    memory_pb2_grpc.add_MemoryServicer_to_server(_FakeMemory(rec), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with eg.StreamingClient(f"127.0.0.1:{port}") as client:
            await client.list_spaces()
    finally:
        await server.stop(None)
    assert rec.calls == [("ListSpaces", None, "")]


class _RefusingStreaming(streaming_pb2_grpc.StreamingServicer):
    """Refuses every observe stream at once, before reading it (as the
    engram server does with a missing key)."""

    async def ObserveStream(self, request_iterator: AsyncIterator[streaming_pb2.ObserveRequest], context: Any) -> AsyncIterator[streaming_pb2.ObserveResponse]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing API key")
        yield streaming_pb2.ObserveResponse()  # unreachable


async def test_a_refused_stream_reports_the_servers_status() -> None:
    """grpc.aio (grpc/grpc#36066) sometimes turns such a refusal into
    ``INTERNAL: Internal error from Core`` when the client's first writes
    race with it; the client must still report Unauthenticated, every time."""
    server = grpc.aio.server()
    streaming_pb2_grpc.add_StreamingServicer_to_server(_RefusingStreaming(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with eg.StreamingClient(f"127.0.0.1:{port}", space="s") as client:
            for _ in range(40):
                with pytest.raises(eg.Unauthenticated) as refused:
                    await asyncio.wait_for(client.observe({"embedding": vec(0)}), 10)
                assert refused.value.message == "missing API key"
    finally:
        await server.stop(None)
