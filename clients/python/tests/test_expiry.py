"""Memory expiry against a real server: an episode's ``ttl_seconds`` or
``expires_at`` and a space's ``default_ttl_seconds``. Expired memories are
never recalled (unary or streamed) from the instant they expire, and the
background purge counts them in ``SpaceInfo.expired_count``; bad expiries
are refused naming their field, and a stream goes on after one.

Time passes through the server's test clock (``--fault-injection``:
``POST /v1/admin/faults {"advance_clock_seconds": s}``), so TTLs are hours,
not seconds, and nothing depends on how fast the machine is. One server
serves the module: its clock only moves forward, and every test reads the
time from it (:meth:`ServerClock.now`)."""

from __future__ import annotations

import math
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

import engram_grpc as eg
from conftest import EngramServer, wait_for
from helpers import unit_vector, until

DIM = 8
HOUR = 3600.0
#: The longest TTL the server takes: 100 years (of 365.25 days).
MAX_TTL = 3_155_760_000.0
#: How long the background purge may take to count an expired memory.
PURGE_TIMEOUT = 30.0


class ServerClock:
    """The server's expiry clock: the system time plus the offset the
    tests moved it by."""

    def __init__(self, server: EngramServer) -> None:
        self.server = server
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        answer = self.server.post("/v1/admin/faults", {"advance_clock_seconds": seconds})
        offset = float(answer["clock_offset_seconds"])
        assert offset == pytest.approx(self.offset + seconds, abs=1e-3), answer
        self.offset = offset

    def advance_past(self, instant: datetime, by: float = 1.0) -> None:
        """Moves the clock to ``by`` seconds after ``instant``."""
        seconds = (instant - self.now()).total_seconds() + by
        assert seconds > 0, f"the server's clock is already past {instant}"
        self.advance(seconds)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset)


@pytest.fixture(scope="module")
def expiry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngramServer]:
    data_dir: Path = tmp_path_factory.mktemp("engram-expiry")
    srv = EngramServer(data_dir, ["--fault-injection", "--wal-sync", "interval"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clock(expiry_server: EngramServer) -> ServerClock:
    return ServerClock(expiry_server)


#: A cue every memory of a test's space matches (threshold -1, k = 1000).
def _everything(rng: random.Random) -> eg.Cue:
    return eg.Cue(embedding=unit_vector(DIM, rng), max_results=1000, similarity_threshold=-1.0)


async def _recalled(client: eg.StreamingClient, space: Optional[str] = None) -> Dict[str, eg.RecalledMemory]:
    """Every memory a recall returns, by id; the streamed recall (one
    memory per batch) must return the same ones."""
    cue = _everything(random.Random(0))
    unary = {m.memory_id: m for m in (await client.recall(cue, space=space)).memories}
    streamed: List[str] = [
        m.memory_id async for batch in client.recall_stream(cue, space=space, batch_size=1) for m in batch.memories
    ]
    assert sorted(streamed) == sorted(unary), "recall_stream returned other memories than recall"
    return unary


def _ids(memories: Dict[str, eg.RecalledMemory]) -> Set[str]:
    return set(memories)


async def _wait_expired(client: eg.StreamingClient, expired: int, count: int, space: Optional[str] = None) -> None:
    """Until describe counts ``expired`` purged memories and ``count`` left."""

    async def purged() -> bool:
        info = await client.describe_space(space)
        return info.expired_count == expired and info.count == count

    try:
        await until(purged, PURGE_TIMEOUT, f"expired_count == {expired} and count == {count}", interval=0.1)
    except AssertionError:
        info = await client.describe_space(space)
        raise AssertionError(f"after {PURGE_TIMEOUT:g} s: {info}") from None


def _close_to(got: Optional[datetime], want_from: datetime, want_to: datetime) -> None:
    """``got`` lies in [want_from, want_to], give or take a second."""
    assert got is not None, "no expires_at in the answer"
    assert got.tzinfo is not None
    slack = timedelta(seconds=1)
    assert want_from - slack <= got <= want_to + slack, (got, want_from, want_to)


async def test_a_ttl_memory_is_recalled_until_it_expires(
    expiry_server: EngramServer, clock: ServerClock, space: str
) -> None:
    rng = random.Random(1)
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        created = await client.create_space(dimension=DIM)
        assert created.default_ttl_seconds == 0.0 and created.expired_count == 0
        before = clock.now()
        # Streamed and unary, each with a TTL; one memory without.
        await client.observe(eg.Episode(id="streamed", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR))
        await client.remember(eg.Episode(id="unary", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR))
        await client.observe({"id": "kept", "embedding": unit_vector(DIM, rng)})
        after = clock.now()

        memories = await _recalled(client)
        assert _ids(memories) == {"streamed", "unary", "kept"}
        for memory_id in ("streamed", "unary"):
            _close_to(memories[memory_id].episode.expires_at, before + timedelta(hours=1), after + timedelta(hours=1))
        assert memories["kept"].episode.expires_at is None

        # A minute short of the hour: still there.
        clock.advance_past(before + timedelta(hours=1), by=-60)
        assert _ids(await _recalled(client)) == {"streamed", "unary", "kept"}
        # Past it: gone from the very next recall, unary and streamed, before any purge.
        clock.advance_past(after + timedelta(hours=1))
        assert _ids(await _recalled(client)) == {"kept"}
        # The purge removes and counts them.
        await _wait_expired(client, expired=2, count=1)
        assert _ids(await _recalled(client)) == {"kept"}


async def test_expired_memories_leave_both_tiers(expiry_server: EngramServer, clock: ServerClock, space: str) -> None:
    """One expiring memory indexed, one in the not-yet-indexed tier: neither
    is recalled once they expire."""
    rng = random.Random(2)
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        answers = [
            a
            async for a in client.observe_many(
                [eg.Episode(id=f"old{i}", embedding=unit_vector(DIM, rng)) for i in range(20)]
                + [eg.Episode(id="indexed", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR)]
            )
        ]
        assert all(a.accepted for a in answers)

        async def indexed() -> bool:
            info = await client.describe_space()
            return info.indexed_count == 21 and info.queue_depth == 0

        await until(indexed, 60.0, "21 memories to be indexed")
        expiry_server.post("/v1/admin/indexing/pause")
        try:
            await client.observe(eg.Episode(id="fresh", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR))
            memories = await _recalled(client)
            assert memories["indexed"].indexed and not memories["fresh"].indexed
            assert len(memories) == 22
            clock.advance(HOUR + 1)
            assert _ids(await _recalled(client)) == {f"old{i}" for i in range(20)}
        finally:
            expiry_server.post("/v1/admin/indexing/resume")
        await _wait_expired(client, expired=2, count=20)
        assert _ids(await _recalled(client)) == {f"old{i}" for i in range(20)}


async def test_an_expires_at_memory_is_recalled_until_then(
    expiry_server: EngramServer, clock: ServerClock, space: str
) -> None:
    rng = random.Random(3)
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        # Two hours from now by the server's clock (the one that decides); to the microsecond.
        at = (clock.now() + timedelta(hours=2)).replace(microsecond=123456)
        await client.observe(eg.Episode(id="streamed", embedding=unit_vector(DIM, rng), expires_at=at))
        # A naive datetime is UTC, as for when.
        naive = at.astimezone(timezone.utc).replace(tzinfo=None)
        await client.remember({"id": "unary", "embedding": unit_vector(DIM, rng), "expires_at": naive})
        # Another time zone: the same instant.
        later = (at + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-7)))
        await client.remember(eg.Episode(id="later", embedding=unit_vector(DIM, rng), expires_at=later))

        memories = await _recalled(client)
        assert _ids(memories) == {"streamed", "unary", "later"}
        assert memories["streamed"].episode.expires_at == at
        assert memories["unary"].episode.expires_at == at
        assert memories["later"].episode.expires_at == later

        clock.advance_past(at)
        assert _ids(await _recalled(client)) == {"later"}
        await _wait_expired(client, expired=2, count=1)
        clock.advance_past(later)
        assert _ids(await _recalled(client)) == set()
        await _wait_expired(client, expired=3, count=0)


async def test_the_space_default_applies_to_memories_without_their_own(
    expiry_server: EngramServer, clock: ServerClock, space: str
) -> None:
    rng = random.Random(4)
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        created = await client.create_space(dimension=DIM, default_ttl_seconds=HOUR)
        assert created.default_ttl_seconds == HOUR
        assert (await client.describe_space()).default_ttl_seconds == HOUR
        listed = {s.memory_space_id: s for s in await client.list_spaces()}
        assert listed[space].default_ttl_seconds == HOUR
        # Again with the same default, or none named: the same space; another default: AlreadyExists.
        assert (await client.create_space(dimension=DIM, default_ttl_seconds=HOUR)).default_ttl_seconds == HOUR
        assert (await client.create_space(dimension=DIM)).default_ttl_seconds == HOUR
        for other in (2 * HOUR, 0.0):
            with pytest.raises(eg.AlreadyExists, match="(?i)ttl"):
                await client.create_space(dimension=DIM, default_ttl_seconds=other)

        before = clock.now()
        await client.observe(eg.Episode(id="default", embedding=unit_vector(DIM, rng)))
        await client.remember(eg.Episode(id="default-unary", embedding=unit_vector(DIM, rng)))
        # Their own expiry wins over the default, longer or shorter.
        await client.observe(eg.Episode(id="own-longer", embedding=unit_vector(DIM, rng), ttl_seconds=3 * HOUR))
        await client.observe(
            eg.Episode(id="own-at", embedding=unit_vector(DIM, rng), expires_at=before + timedelta(hours=2))
        )
        await client.observe(eg.Episode(id="own-shorter", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR / 2))
        after = clock.now()

        memories = await _recalled(client)
        assert _ids(memories) == {"default", "default-unary", "own-longer", "own-at", "own-shorter"}
        for memory_id in ("default", "default-unary"):
            _close_to(memories[memory_id].episode.expires_at, before + timedelta(hours=1), after + timedelta(hours=1))
        _close_to(memories["own-longer"].episode.expires_at, before + timedelta(hours=3), after + timedelta(hours=3))
        assert memories["own-at"].episode.expires_at == before + timedelta(hours=2)
        half_hour = timedelta(minutes=30)
        _close_to(memories["own-shorter"].episode.expires_at, before + half_hour, after + half_hour)

        clock.advance_past(after + timedelta(minutes=30))
        assert _ids(await _recalled(client)) == {"default", "default-unary", "own-longer", "own-at"}
        clock.advance_past(after + timedelta(hours=1))
        assert _ids(await _recalled(client)) == {"own-longer", "own-at"}
        await _wait_expired(client, expired=3, count=2)
        clock.advance_past(before + timedelta(hours=2))
        assert _ids(await _recalled(client)) == {"own-longer"}
        clock.advance_past(after + timedelta(hours=3))
        assert _ids(await _recalled(client)) == set()
        await _wait_expired(client, expired=5, count=0)
        # Memories observed now get the default too (and not from the old clock).
        now = clock.now()
        await client.observe(eg.Episode(id="new", embedding=unit_vector(DIM, rng)))
        _close_to(
            (await _recalled(client))["new"].episode.expires_at,
            now + timedelta(hours=1),
            clock.now() + timedelta(hours=1),
        )


async def test_a_space_without_a_default_keeps_none(expiry_server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        assert (await client.create_space(dimension=DIM)).default_ttl_seconds == 0.0
        # 0 names "none": the same as the existing space's.
        assert (await client.create_space(dimension=DIM, default_ttl_seconds=0)).default_ttl_seconds == 0.0
        with pytest.raises(eg.AlreadyExists):
            await client.create_space(dimension=DIM, default_ttl_seconds=HOUR)
        explicit = await client.create_space(f"{space}-zero", dimension=DIM, default_ttl_seconds=0)
        assert explicit.default_ttl_seconds == 0.0
        with pytest.raises(eg.AlreadyExists):
            await client.create_space(f"{space}-zero", dimension=DIM, default_ttl_seconds=60)
        # The longest default there is.
        longest = await client.create_space(f"{space}-max", dimension=DIM, default_ttl_seconds=MAX_TTL)
        assert longest.default_ttl_seconds == MAX_TTL


async def test_bad_expiries_are_refused_naming_the_field(
    expiry_server: EngramServer, clock: ServerClock, space: str
) -> None:
    rng = random.Random(5)
    async with eg.StreamingClient(expiry_server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        clock.advance(HOUR)  # the server's clock is now an hour ahead of the system's
        in_a_day = clock.now() + timedelta(days=1)
        system_now = datetime.now(timezone.utc)

        def expiring(**expiry: object) -> eg.Episode:
            return eg.Episode(embedding=unit_vector(DIM, rng), **expiry)  # type: ignore[arg-type]

        bad: List[Tuple[str, eg.Episode]] = [
            ("both", expiring(expires_at=in_a_day, ttl_seconds=HOUR)),
            ("past", expiring(expires_at=system_now - timedelta(hours=1))),
            # In the future by the system's time, in the past by the server's (the one that decides).
            ("past-for-the-server", expiring(expires_at=system_now + timedelta(minutes=5))),
            ("negative-ttl", expiring(ttl_seconds=-1.0)),
            ("nan-ttl", expiring(ttl_seconds=math.nan)),
            ("infinite-ttl", expiring(ttl_seconds=math.inf)),
            ("too-long-ttl", expiring(ttl_seconds=MAX_TTL + 1)),
        ]
        field = {
            "both": r"episode\.(expires_at|ttl_seconds)",
            "past": r"episode\.expires_at",
            "past-for-the-server": r"episode\.expires_at",
        }
        for name, episode in bad:
            pattern = field.get(name, r"episode\.ttl_seconds")
            # Unary: InvalidArgument naming the field.
            with pytest.raises(eg.InvalidArgument, match=pattern):
                await client.remember(episode)
            # Streamed: this observation is rejected, INVALID; the stream goes on.
            with pytest.raises(eg.Rejected) as rejected:
                await client.observe(episode)
            assert rejected.value.reason == eg.RejectReason.INVALID, name
            assert re.search(pattern, rejected.value.message), (name, rejected.value.message)
            ack = await client.observe(eg.Episode(id=f"ok-{name}", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR))
            assert ack.accepted

        # In observe_many: one rejection among acks, in order.
        answers = [
            a
            async for a in client.observe_many(
                [
                    eg.Episode(id="many-1", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR),
                    bad[0][1],
                    eg.Episode(id="many-2", embedding=unit_vector(DIM, rng), expires_at=in_a_day),
                ]
            )
        ]
        assert [type(a).__name__ for a in answers] == ["Ack", "Rejection", "Ack"]
        assert isinstance(answers[1], eg.Rejection) and answers[1].reason == eg.RejectReason.INVALID

        # The longest TTL there is: accepted.
        await client.remember(eg.Episode(id="longest", embedding=unit_vector(DIM, rng), ttl_seconds=MAX_TTL))

        # Caught before sending: a TTL of 0 (unset on the wire), a non-number.
        with pytest.raises(ValueError, match="ttl_seconds must be above 0"):
            await client.observe(eg.Episode(embedding=unit_vector(DIM, rng), ttl_seconds=0))
        with pytest.raises(TypeError, match="ttl_seconds"):
            await client.remember({"embedding": unit_vector(DIM, rng), "ttl_seconds": "1h"})
        with pytest.raises(TypeError, match="expires_at|datetime"):
            await client.remember({"embedding": unit_vector(DIM, rng), "expires_at": "tomorrow"})

        # Only the good ones were stored.
        want = {f"ok-{name}" for name, _ in bad} | {"many-1", "many-2", "longest"}
        assert _ids(await _recalled(client)) == want
        assert (await client.describe_space()).count == len(want)

        # A bad space default: InvalidArgument naming it, nothing created.
        for value in (-1.0, math.nan, math.inf, MAX_TTL + 1):
            with pytest.raises(eg.InvalidArgument, match="default_ttl_seconds"):
                await client.create_space(f"{space}-bad", dimension=DIM, default_ttl_seconds=value)
        with pytest.raises(TypeError, match="default_ttl_seconds"):
            await client.create_space(f"{space}-bad", dimension=DIM, default_ttl_seconds="1h")  # type: ignore[arg-type]
        with pytest.raises(eg.NotFound):
            await client.describe_space(f"{space}-bad")


def test_the_sync_client_sets_and_shows_expiry(expiry_server: EngramServer, clock: ServerClock, space: str) -> None:
    rng = random.Random(6)
    with eg.Client(expiry_server.target, space=space) as client:
        info = client.create_space(dimension=DIM, default_ttl_seconds=2 * HOUR)
        assert info.default_ttl_seconds == 2 * HOUR
        with pytest.raises(eg.AlreadyExists):
            client.create_space(dimension=DIM, default_ttl_seconds=HOUR)
        before = clock.now()
        client.observe(eg.Episode(id="default", embedding=unit_vector(DIM, rng)))
        client.remember(eg.Episode(id="own", embedding=unit_vector(DIM, rng), ttl_seconds=HOUR))
        after = clock.now()
        cue = _everything(rng)
        memories = {m.memory_id: m for m in client.recall(cue).memories}
        assert set(memories) == {"default", "own"}
        _close_to(memories["default"].episode.expires_at, before + timedelta(hours=2), after + timedelta(hours=2))
        _close_to(memories["own"].episode.expires_at, before + timedelta(hours=1), after + timedelta(hours=1))
        clock.advance_past(after + timedelta(hours=1))
        assert [m.memory_id for m in client.recall(cue).memories] == ["default"]
        assert [m.memory_id for b in client.recall_stream(cue, batch_size=1) for m in b.memories] == ["default"]
        wait_for(lambda: client.describe_space().expired_count == 1, PURGE_TIMEOUT, "expired_count == 1", interval=0.1)
        assert client.describe_space().count == 1
