"""Vector storage against a real server: a compact space keeps the exact
vectors of its indexed memories on the server's disk, recalls them all the
same, and says so in describe; bad storage names fail clearly."""

from __future__ import annotations

import random

import pytest

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector, until

DIM = 64
N = 300


async def test_compact_space_recalls_every_memory_with_its_exact_vector(server: EngramServer, space: str) -> None:
    rng = random.Random(21)
    vectors = {f"c{i}": unit_vector(DIM, rng) for i in range(N)}
    async with eg.StreamingClient(server.target, space=space) as client:
        created = await client.create_space(dimension=DIM, vector_storage="compact")
        assert created.vector_storage == "compact" and created.count == 0
        assert created.memory.vectors_on_disk == 0
        # Again with the same storage, or none named: the same space.
        assert (await client.create_space(dimension=DIM, vector_storage="compact")).vector_storage == "compact"
        assert (await client.create_space(dimension=DIM)).vector_storage == "compact"
        with pytest.raises(eg.AlreadyExists, match="vector storage"):
            await client.create_space(dimension=DIM, vector_storage="memory")

        answers = [a async for a in client.observe_many(eg.Episode(id=k, embedding=v) for k, v in vectors.items())]
        assert [a.memory_id for a in answers if isinstance(a, eg.Ack)] == list(vectors)

        async def indexed() -> bool:
            info = await client.describe_space()
            return info.indexed_count == N and info.queue_depth == 0

        await until(indexed, 60.0, f"{N} memories to be indexed")

        for memory_id, vector in vectors.items():
            result = await client.recall(eg.Cue(embedding=vector, max_results=10), include_embeddings=True)
            top = result.memories[0]
            assert top.memory_id == memory_id
            assert top.indexed
            got = top.episode.embedding
            assert len(got) == DIM
            worst = max(abs(a - b) for a, b in zip(got, vector))
            assert worst <= 1e-6, f"{memory_id}: the recalled vector differs by {worst}"

        info = await client.describe_space()
        assert info.vector_storage == "compact"
        assert info.count == N and info.indexed_count == N
        assert info.memory.vectors == 0, "no exact vectors in RAM"
        assert info.memory.vectors_on_disk > 0
        assert info.memory.total == (
            info.memory.codes + info.memory.graph + info.memory.episodes + info.memory.fresh
        ), "total counts RAM only"
        listed = {s.memory_space_id: s for s in await client.list_spaces()}
        assert listed[space].vector_storage == "compact"


async def test_memory_is_the_default_and_bad_storage_names_fail_clearly(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        plain = await client.create_space(dimension=DIM)
        assert plain.vector_storage == "memory"
        assert plain.memory.vectors_on_disk == 0
        with pytest.raises(eg.AlreadyExists, match="vector storage"):
            await client.create_space(dimension=DIM, vector_storage="compact")
        for bad in ("disk", "Compact", ""):
            with pytest.raises(ValueError, match=r"invalid vector_storage: is '.*'; expected 'memory' or 'compact'"):
                await client.create_space(f"{space}-bad", dimension=DIM, vector_storage=bad)
        with pytest.raises(TypeError, match="vector_storage"):
            await client.create_space(f"{space}-bad", dimension=DIM, vector_storage=2)  # type: ignore[arg-type]
        # Nothing was sent for them.
        with pytest.raises(eg.NotFound):
            await client.describe_space(f"{space}-bad")
        # The explicit memory storage.
        explicit = await client.create_space(f"{space}-mem", dimension=DIM, vector_storage="memory")
        assert explicit.vector_storage == "memory"


def test_sync_client_creates_a_compact_space(server: EngramServer, space: str) -> None:
    with eg.Client(server.target, space=space) as client:
        info = client.create_space(dimension=DIM, vector_storage="compact")
        assert info.vector_storage == "compact"
        assert client.describe_space().vector_storage == "compact"
        with pytest.raises(ValueError, match="vector_storage"):
            client.create_space(dimension=DIM, vector_storage="disk")
