"""StreamingClient against a real server: observe, observe_many, recall,
recall_stream, inputs, errors and the unary helpers."""

from __future__ import annotations

import asyncio
import math
import random
from typing import List

import numpy as np
import pytest

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector

DIM = 16


async def test_observe_returns_a_durable_ack(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        ack = await client.observe(eg.Episode(id="first", what="hello", embedding=unit_vector(DIM, random.Random(1))))
        assert ack.accepted
        assert ack.memory_id == "first"
        assert ack.server_sequence == 1
        assert ack.sequence_number == 1
        assert ack.committed_at is not None
        assert not ack.duplicate
        info = await client.describe_space()
        assert info.count == 1 and info.dimension == DIM and info.last_sequence == 1


async def test_observe_many_acks_a_thousand_in_order(server: EngramServer, space: str) -> None:
    rng = random.Random(2)
    episodes = [eg.Episode(id=f"e{i}", what=f"episode {i}", embedding=unit_vector(DIM, rng)) for i in range(1000)]
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        answers = [a async for a in client.observe_many(episodes)]
        assert len(answers) == 1000
        assert all(isinstance(a, eg.Ack) for a in answers)
        acks = [a for a in answers if isinstance(a, eg.Ack)]
        assert [a.memory_id for a in acks] == [f"e{i}" for i in range(1000)]
        assert [a.sequence_number for a in acks] == list(range(1, 1001))
        seqs = [a.server_sequence for a in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == 1000
        assert (await client.describe_space()).count == 1000


async def test_recall_sees_what_was_just_acked(server: EngramServer, space: str) -> None:
    rng = random.Random(3)
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        for i in range(50):
            vec = unit_vector(DIM, rng)
            ack = await client.observe({"what": f"item {i}", "embedding": vec})
            # No wait of any kind: visible to the very next recall.
            result = await client.recall(eg.Cue(embedding=vec, max_results=1))
            assert [m.memory_id for m in result.memories] == [ack.memory_id]
            assert result.memories[0].similarity == pytest.approx(1.0, abs=1e-4)
            assert result.snapshot_sequence >= ack.server_sequence


async def test_recall_stream_returns_batches(server: EngramServer, space: str) -> None:
    rng = random.Random(4)
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        async for answer in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(100)):
            assert answer.accepted
        cue = unit_vector(DIM, rng)
        batches = [b async for b in client.recall_stream({"embedding": cue, "max_results": 30}, batch_size=10)]
        assert len(batches) == 3
        assert [b.more for b in batches] == [True, True, False]
        assert {b.snapshot_sequence for b in batches} == {100}
        ids = [m.memory_id for b in batches for m in b.memories]
        assert len(ids) == 30 and len(set(ids)) == 30
        # The streamed top 30 are the unary top 30.
        whole = await client.recall({"embedding": cue, "max_results": 30})
        assert set(ids) == {m.memory_id for m in whole.memories}
        # An empty result is one empty batch.
        empty = [b async for b in client.recall_stream({"embedding": cue, "similarity_threshold": 1.0}, batch_size=10)]
        assert len(empty) == 1 and empty[0].memories == () and not empty[0].more


async def test_numpy_embeddings(server: EngramServer, space: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((20, DIM)).astype(np.float32)
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        acks = [a async for a in client.observe_many(eg.Episode(embedding=v, what="np") for v in vectors)]
        assert all(a.accepted for a in acks)
        hit = await client.recall(eg.Cue(embedding=vectors[7], max_results=1), include_embeddings=True)
        assert hit.memories[0].memory_id == acks[7].memory_id
        stored = np.array(hit.memories[0].episode.embedding)
        expected = vectors[7] / np.linalg.norm(vectors[7])  # stored L2-normalised
        assert np.allclose(stored, expected, atol=1e-5)
        # A bare numpy vector is a cue too; float64 works as well.
        again = await client.recall(vectors[7].astype(np.float64))
        assert again.memories[0].memory_id == acks[7].memory_id


async def test_dicts_and_dataclasses_carry_every_field(server: EngramServer, space: str) -> None:
    from datetime import datetime, timezone

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    vec_a = [1.0] + [0.0] * (DIM - 1)
    vec_b = [0.0, 1.0] + [0.0] * (DIM - 2)
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        await client.observe(
            eg.Episode(
                id="dc", what="from a dataclass", embedding=vec_a, when=when,
                encoding_confidence=0.5, tags=["a", "b"], metadata={"k": "v"},
            )
        )
        await client.observe(
            {"id": "dict", "what": "from a dict", "embedding": tuple(vec_b), "when": when,
             "tags": ["c"], "metadata": {"x": "y"}}
        )
        got = {m.memory_id: m.episode for m in (await client.recall({"embedding": vec_a, "max_results": 5})).memories}
        assert got["dc"].what == "from a dataclass"
        assert got["dc"].when == when
        assert got["dc"].encoding_confidence == pytest.approx(0.5)
        assert got["dc"].tags == ("a", "b") and got["dc"].metadata == {"k": "v"}
        assert got["dict"].what == "from a dict" and got["dict"].tags == ("c",) and got["dict"].metadata == {"x": "y"}
        # A time window in the cue.
        windowed = await client.recall(eg.Cue(embedding=vec_a, when_from=when, when_to=when))
        assert {m.memory_id for m in windowed.memories} == {"dc", "dict"}
        with pytest.raises(TypeError):
            await client.observe({"embedding": vec_a, "colour": "red"})


async def test_bad_input_is_rejected_and_the_stream_goes_on(server: EngramServer, space: str) -> None:
    rng = random.Random(6)
    good = unit_vector(DIM, rng)
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        with pytest.raises(eg.Rejected) as wrong_dim:
            await client.observe({"embedding": [1.0, 2.0, 3.0]})
        assert wrong_dim.value.reason == eg.RejectReason.INVALID
        assert "dimension" in wrong_dim.value.message and wrong_dim.value.message == wrong_dim.value.rejection.message
        with pytest.raises(eg.Rejected) as nan:
            await client.observe({"embedding": [math.nan] + good[1:]})
        assert nan.value.reason == eg.RejectReason.INVALID
        episodes: List[eg.EpisodeLike] = [
            {"id": "ok-1", "embedding": good},
            {"id": "bad-zero", "embedding": [0.0] * DIM},
            {"id": "bad-inf", "embedding": [math.inf] * DIM},
            {"id": "ok-2", "embedding": unit_vector(DIM, rng)},
        ]
        answers = [a async for a in client.observe_many(episodes)]
        assert [a.accepted for a in answers] == [True, False, False, True]
        rejected = [a for a in answers if isinstance(a, eg.Rejection)]
        assert [r.episode_id for r in rejected] == ["bad-zero", "bad-inf"]
        assert all(r.reason == eg.RejectReason.INVALID for r in rejected)
        ack = await client.observe({"id": "ok-3", "embedding": good})
        assert ack.memory_id == "ok-3"
        assert (await client.describe_space()).count == 3
        stats = client.session_stats()
        assert stats is not None and stats.accepted == 3 and stats.rejected == 4 and stats.reconnects == 0
        # Unary calls raise typed errors.
        with pytest.raises(eg.InvalidArgument):
            await client.recall([1.0, 2.0])
        with pytest.raises(eg.InvalidArgument):
            await client.remember({"embedding": [math.nan] * DIM})


async def test_unknown_space_and_space_lifecycle(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        with pytest.raises(eg.NotFound):
            await client.describe_space("no-such-space")
        created = await client.create_space(dimension=DIM)
        assert created.memory_space_id == space and created.dimension == DIM and created.count == 0
        assert (await client.create_space(dimension=DIM)).dimension == DIM  # idempotent
        with pytest.raises(eg.AlreadyExists):
            await client.create_space(dimension=DIM + 1)
        assert space in {s.memory_space_id for s in await client.list_spaces()}
        vec = [1.0] * DIM
        first = await client.remember({"id": "r1", "what": "unary", "embedding": vec})
        assert not first.duplicate and first.memory_id == "r1"
        again = await client.remember({"id": "r1", "what": "unary", "embedding": vec})
        assert again.duplicate and again.server_sequence == first.server_sequence
        await client.forget("r1")
        assert "r1" not in {m.memory_id for m in (await client.recall(vec)).memories}
        with pytest.raises(eg.NotFound):
            await client.forget("r1")
        await client.delete_space(space)
        with pytest.raises(eg.NotFound):
            await client.describe_space()


async def test_connect_to_nothing_is_unavailable() -> None:
    from conftest import free_port

    client = eg.StreamingClient(f"127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(eg.Unavailable):
        await client.connect()
    await client.close()


async def test_observe_many_from_an_async_source_and_stopping_early(server: EngramServer, space: str) -> None:
    rng = random.Random(12)

    async def source(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            if i % 10 == 0:
                await asyncio.sleep(0.001)  # a producer that is sometimes slow
            yield {"id": f"a{i}", "embedding": unit_vector(DIM, rng)}

    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        answers = [a async for a in client.observe_many(source(200), priority=eg.Priority.HIGH)]
        assert [a.memory_id for a in answers if isinstance(a, eg.Ack)] == [f"a{i}" for i in range(200)]
        # Stop reading after 10 answers: what was submitted still completes,
        # and the session keeps working.
        seen = 0
        async for _ in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(500)):
            seen += 1
            if seen == 10:
                break
        ack = await client.observe({"id": "after", "embedding": unit_vector(DIM, rng)})
        assert ack.memory_id == "after"
        stats = client.session_stats()
        assert stats is not None and stats.rejected == 0 and stats.reconnects == 0
        # A conversion error is raised in order, after the answers before it.
        got: List[eg.Answer] = []
        with pytest.raises(TypeError):
            async for a in client.observe_many([{"embedding": unit_vector(DIM, rng)}, {"what": "no embedding"}]):
                got.append(a)
        assert len(got) == 1 and got[0].accepted
