"""A server killed mid-stream (SIGKILL) and restarted on the same data dir
and ports: the client reconnects and every acked observation is stored
exactly once."""

from __future__ import annotations

import asyncio
import random
from typing import Callable, Dict, List

import pytest

import engram_grpc as eg
from conftest import EngramServer, free_port
from helpers import TcpProxy, unit_vector

DIM = 16


async def test_sigkill_mid_stream_then_restart(make_server: Callable[..., EngramServer], space: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    grpc_port, http_port = free_port(), free_port()
    data_dir = tmp_path / "crash-data"
    server = make_server("--wal-sync", "always", grpc_port=grpc_port, http_port=http_port, data_dir=data_dir)
    rng = random.Random(9)
    total = 6000
    kill_after = 1500
    vectors = [unit_vector(DIM, rng) for _ in range(total)]
    reconnects: List[eg.Reconnected] = []
    options = eg.ClientOptions(
        reconnect=eg.BackoffPolicy(initial=0.05, max=1.0, max_attempts=60),
        on_event=lambda e: reconnects.append(e) if isinstance(e, eg.Reconnected) else None,
    )
    answers: List[eg.Answer] = []
    reached = asyncio.Event()
    restarted: List[EngramServer] = []

    async def crash_and_restart() -> None:
        await asyncio.wait_for(reached.wait(), 60)
        await asyncio.to_thread(server.kill)
        # Same data dir, same ports: the client's target stays valid.
        restarted.append(
            await asyncio.to_thread(
                make_server, "--wal-sync", "always", grpc_port=grpc_port, http_port=http_port, data_dir=data_dir
            )
        )

    async with eg.StreamingClient(server.target, space=space, options=options) as client:
        await client.create_space(dimension=DIM)
        crasher = asyncio.ensure_future(crash_and_restart())
        # Caller gives no ids: the client makes uuid4s, which dedupe resends.
        episodes = ({"what": f"episode {i}", "embedding": v} for i, v in enumerate(vectors))
        async for answer in client.observe_many(episodes):
            answers.append(answer)
            if len(answers) == kill_after:
                reached.set()
        await asyncio.wait_for(crasher, 60)
        stats = client.session_stats()
        assert stats is not None

        assert restarted, "the server was never restarted"
        assert len(answers) == total
        rejected = [a for a in answers if not isinstance(a, eg.Ack)]
        assert not rejected, rejected[:3]
        acks = [a for a in answers if isinstance(a, eg.Ack)]
        ids = [a.memory_id for a in acks]
        assert len(set(ids)) == total, "two observations got the same id"
        assert stats.reconnects >= 1 and reconnects, "the client never reconnected"
        # Stored exactly once: the count is the number of distinct episodes.
        info = await client.describe_space()
        assert info.count == total, f"{info.count} stored for {total} distinct episodes"
        # Every acked memory is recallable by its own embedding.
        sem = asyncio.Semaphore(32)
        missing: Dict[int, str] = {}

        async def check(i: int) -> None:
            async with sem:
                result = await client.recall({"embedding": vectors[i], "max_results": 1})
                if [m.memory_id for m in result.memories] != [ids[i]]:
                    missing[i] = ids[i]

        await asyncio.gather(*(check(i) for i in range(total)))
        assert not missing, f"{len(missing)} acked memories not recalled, e.g. {list(missing.items())[:3]}"
        print(
            f"\ncrash test: reconnects={stats.reconnects} sessions_replaced={stats.sessions_replaced} "
            f"duplicates={sum(a.duplicate for a in acks)} replayed={sum(a.replayed for a in acks)} "
            f"resent={sum(r.resent for r in reconnects)}"
        )


async def test_broken_connection_resumes_the_session(server: EngramServer, space: str) -> None:
    """The connection drops but the server keeps the session: the client
    resumes it, resends what is unanswered under the same numbers, and the
    server replays the answers it had given; nothing is stored twice."""
    proxy = await TcpProxy(server.target).start()
    rng = random.Random(11)
    total = 6000
    events: List[eg.Reconnected] = []
    options = eg.ClientOptions(
        reconnect=eg.BackoffPolicy(initial=0.05, max=0.5, max_attempts=20),
        on_event=lambda e: events.append(e) if isinstance(e, eg.Reconnected) else None,
    )
    try:
        async with eg.StreamingClient(proxy.address, space=space, options=options) as client:
            await client.create_space(dimension=DIM)
            answers: List[eg.Answer] = []
            async for answer in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(total)):
                answers.append(answer)
                if len(answers) in (1500, 4000):
                    proxy.sever()
            stats = client.session_stats()
            assert stats is not None
            assert all(isinstance(a, eg.Ack) for a in answers)
            acks = [a for a in answers if isinstance(a, eg.Ack)]
            assert [a.sequence_number for a in acks] == list(range(1, total + 1))
            assert len({a.memory_id for a in acks}) == total
            assert len(events) >= 2 and all(e.resumed for e in events), events
            assert stats.sessions_replaced == 0
            # Resumed, not replaced: wire numbers never restarted.
            assert all(a.wire_sequence == a.sequence_number for a in acks)
            assert not any(a.duplicate for a in acks)
            assert (await client.describe_space()).count == total
            print(f"\nresume test: resent={sum(e.resent for e in events)} replayed={sum(a.replayed for a in acks)}")
    finally:
        await proxy.close()


async def _idle_session_is_closed(target: str, space: str) -> None:
    """Opens a raw stream that sends nothing after init and waits until the
    server ends it with ABORTED (the idle timeout)."""
    import grpc

    from engram_grpc._proto.engram.v1 import streaming_pb2 as pb
    from engram_grpc._proto.engram.v1 import streaming_pb2_grpc

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.ObserveRequest(init=pb.StreamInit(memory_space_id=space))
        await asyncio.Event().wait()  # silent, and the stream stays open

    async with grpc.aio.insecure_channel(target) as channel:
        call = streaming_pb2_grpc.StreamingStub(channel).ObserveStream(requests())
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.ABORTED, e
            assert "idle timeout" in (e.details() or ""), e
            return
        raise AssertionError("the idle stream ended without the idle-timeout status")


async def test_heartbeats_keep_an_idle_session_open(make_server: Callable[..., EngramServer], space: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "engram.toml"
    config.write_text("[engine.sessions]\nidle_timeout_secs = 1\n")
    server = make_server("--config", str(config))
    async with eg.StreamingClient(server.target, space=space, heartbeat_interval=0.25) as client:
        await client.observe({"embedding": [1.0] * DIM})
        stats = client.session_stats()
        assert stats is not None
        session_id = stats.session_id
        # A session beside it that sends nothing: once the server has closed
        # that one for idling, the client's session was idle as long, and
        # only its heartbeats kept it open.
        await asyncio.wait_for(_idle_session_is_closed(server.target, space), timeout=30)
        ack = await client.observe({"embedding": [0.5] * DIM})
        assert ack.sequence_number == 2
        stats = client.session_stats()
        assert stats is not None and stats.session_id == session_id and stats.reconnects == 0 and stats.connected


async def test_giving_up_reconnecting_raises_unavailable(make_server: Callable[..., EngramServer], space: str) -> None:
    server = make_server()
    policy = eg.BackoffPolicy(initial=0.05, max=0.1, max_attempts=3)
    disconnects: List[eg.Disconnected] = []
    async with eg.StreamingClient(
        server.target, space=space, reconnect=policy,
        on_event=lambda e: disconnects.append(e) if isinstance(e, eg.Disconnected) else None,
    ) as client:
        await client.observe({"embedding": [1.0] * DIM})
        server.kill()
        with pytest.raises(eg.Unavailable, match="gave up reconnecting after 3 attempts"):
            await client.observe({"embedding": [1.0] * DIM})
        assert [d.attempt for d in disconnects] == [1, 2, 3]
        # The failed session is replaced on the next call (which fails fast here).
        with pytest.raises(eg.Unavailable):
            await client.observe({"embedding": [1.0] * DIM})
