"""Overload and SLOW_DOWN against a server with fault injection and a small
indexing queue (200: SLOW_DOWN from 160, overload rejections from 180)."""

from __future__ import annotations

import asyncio
import random
from typing import Callable, List, Tuple

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector, until

DIM = 8
CAPACITY = 200


async def test_overloaded_observations_are_retried_after_retry_after(
    make_server: Callable[..., EngramServer], space: str
) -> None:
    server = make_server("--fault-injection", "--queue-capacity", str(CAPACITY), "--workers", "1", "--wal-sync", "interval")
    retries: List[eg.Retrying] = []
    statuses: List[eg.StatusReceived] = []

    def on_event(event: eg.SessionEvent) -> None:
        if isinstance(event, eg.Retrying):
            retries.append(event)
        elif isinstance(event, eg.StatusReceived):
            statuses.append(event)

    rng = random.Random(7)
    total = 400
    episodes = [{"id": f"o{i}", "embedding": unit_vector(DIM, rng)} for i in range(total)]
    async with eg.StreamingClient(server.target, space=space, on_event=on_event) as client:
        await client.create_space(dimension=DIM)
        server.post("/v1/admin/indexing/pause")
        resumed_at: List[float] = []
        overloaded: List[eg.Overloaded] = []

        async def retried() -> bool:
            return bool(retries)

        async def told_overloaded() -> bool:
            return any(s.status.state == eg.StreamState.OVERLOADED for s in statuses)

        async def resume_later() -> None:
            # Keep the queue full until the stream was rejected, told it is
            # OVERLOADED, and a unary call was refused too.
            await until(retried, 30, "an overload rejection")
            # Unary calls get RESOURCE_EXHAUSTED with RetryInfo meanwhile.
            try:
                await client.remember({"id": "unary", "embedding": unit_vector(DIM, rng)})
            except eg.Overloaded as e:
                overloaded.append(e)
            await until(told_overloaded, 30, "the OVERLOADED status")
            await asyncio.to_thread(server.post, "/v1/admin/indexing/resume")
            resumed_at.append(asyncio.get_running_loop().time())

        resumer = asyncio.ensure_future(resume_later())
        answers: List[Tuple[eg.Answer, float]] = []
        async for answer in client.observe_many(episodes):
            answers.append((answer, asyncio.get_running_loop().time()))
        await resumer
        assert len(overloaded) == 1, "a unary remember into the full queue was not refused as Overloaded"
        assert overloaded[0].retry_after is not None and overloaded[0].retry_after > 0

        # Every observation ends accepted, in order, stored once.
        assert [a.accepted for a, _ in answers] == [True] * total, [a for a, _ in answers if not a.accepted][:3]
        acks = [a for a, _ in answers if isinstance(a, eg.Ack)]
        assert [a.memory_id for a in acks] == [f"o{i}" for i in range(total)]
        retried = [a for a in acks if a.retries > 0]
        assert retried, "nothing was retried: the queue never overflowed"
        assert all(a.wire_sequence != a.sequence_number for a in retried)
        assert any(s.status.state == eg.StreamState.OVERLOADED for s in statuses)
        # The client waited the server's retry-after (clamped to max_delay)
        # before resending: no retried observation was answered earlier.
        first_retry = {}
        for r in retries:
            first_retry.setdefault(r.sequence_number, r)
        for answer, at in answers:
            if isinstance(answer, eg.Ack) and answer.retries > 0:
                r = first_retry[answer.sequence_number]
                assert r.after > 0
                assert at >= r.at + r.after - 0.01, (answer, r)
        await until(lambda: _count(client, total), 30, "every observation indexed")
        assert (await client.describe_space()).count == total
        stats = client.session_stats()
        assert stats is not None and stats.retries == len(retries) and stats.reconnects == 0


async def _count(client: eg.StreamingClient, total: int) -> bool:
    info = await client.describe_space()
    return info.indexed_count == total


async def test_slow_down_is_honoured(make_server: Callable[..., EngramServer], space: str) -> None:
    server = make_server("--fault-injection", "--queue-capacity", str(CAPACITY), "--workers", "1", "--wal-sync", "interval")
    # One worker sleeping 20 ms per observation: the queue drains ~50/s.
    server.post("/v1/admin/faults", {"index_delay_ms": 20})
    events: List[eg.StatusReceived] = []
    ack_times: List[float] = []
    rng = random.Random(8)
    # Few in flight: when SLOW_DOWN arrives, little is already on its way.
    async with eg.StreamingClient(
        server.target, space=space, max_in_flight=4, on_event=lambda e: events.append(e) if isinstance(e, eg.StatusReceived) else None
    ) as client:
        await client.create_space(dimension=DIM)
        # Warm-up: let the server measure its drain rate (it suggests
        # 0.9 x that rate), so SLOW_DOWN carries a rate.
        warm = 60
        async for a in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(warm)):
            assert a.accepted
        await until(lambda: _count(client, warm), 30, "the warm-up indexed")

        total = 300
        async for a in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(total)):
            assert a.accepted
            ack_times.append(asyncio.get_running_loop().time())
        end = asyncio.get_running_loop().time()
        stats = client.session_stats()
        assert stats is not None

    paced = [e for e in events if e.status.state == eg.StreamState.BACKPRESSURE]
    assert paced, f"no SLOW_DOWN status arrived: {[e.status for e in events]}"
    assert all(e.status.suggested_rate > 0 for e in paced)
    rates = [e.pacing_rate for e in paced]
    assert all(r is not None and r > 0 for r in rates)
    # Between each SLOW_DOWN and the next other status, acks came at most at
    # the paced rate (plus what was in flight when the status arrived).
    budget = 0.0
    floor = 0.0
    observed = 0
    marks = events + []
    for i, e in enumerate(marks):
        if e.status.state != eg.StreamState.BACKPRESSURE or e.pacing_rate is None:
            continue
        stop = marks[i + 1].at if i + 1 < len(marks) else end
        n = sum(1 for t in ack_times if e.at <= t < stop)
        observed += n
        # 10% for timer jitter; the 4 in flight; the first paced send goes at once.
        budget += e.pacing_rate * (stop - e.at) * 1.1 + 4 + 1
        floor += e.pacing_rate * (stop - e.at) * 0.5
    assert observed <= budget, f"{observed} acks while paced, budget {budget:.1f}"
    # ... and pacing did not stall the stream either.
    assert observed >= floor, f"{observed} acks while paced, expected at least {floor:.1f}"
    paced_time = sum(
        (marks[i + 1].at if i + 1 < len(marks) else end) - e.at
        for i, e in enumerate(marks)
        if e.status.state == eg.StreamState.BACKPRESSURE
    )
    assert paced_time > 0.5, f"paced for only {paced_time:.2f} s"
    # Pacing kept the queue below the overload level: nothing was rejected.
    assert stats.retries == 0 and stats.rejected == 0


async def test_a_stream_opened_during_slow_down_is_paced_at_once(
    make_server: Callable[..., EngramServer], space: str
) -> None:
    server = make_server("--fault-injection", "--queue-capacity", str(CAPACITY), "--workers", "1", "--wal-sync", "interval")
    server.post("/v1/admin/faults", {"index_delay_ms": 20})
    rng = random.Random(13)
    async with eg.StreamingClient(server.target, space=space) as filler:
        await filler.create_space(dimension=DIM)
        warm = 60  # lets the server measure a drain rate, as above
        async for a in filler.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(warm)):
            assert a.accepted
        await until(lambda: _count(filler, warm), 30, "the warm-up indexed")
        # Fill the queue past the SLOW_DOWN level (80%) with unary calls.
        for _ in range(175):
            await filler.remember({"embedding": unit_vector(DIM, rng)})
        assert (await filler.describe_space()).queue_depth >= 0.8 * CAPACITY
    events: List[eg.StatusReceived] = []
    async with eg.StreamingClient(
        server.target, space=space, on_event=lambda e: events.append(e) if isinstance(e, eg.StatusReceived) else None
    ) as client:
        await client.observe({"embedding": unit_vector(DIM, rng)})
        await until(lambda: _true(bool(events)), 5, "a status on the new stream")
        assert events[0].status.state == eg.StreamState.BACKPRESSURE
        assert events[0].pacing_rate is not None and events[0].pacing_rate > 0


async def _true(value: bool) -> bool:
    return value
