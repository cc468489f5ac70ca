"""A cue's ef_search against a real server: as wide as the space, the
index search is exhaustive and the top-k is the exact one; out of range is
refused naming the field."""

from __future__ import annotations

import random

import pytest

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector, until

DIM = 16
N = 1500


async def test_a_cue_sets_the_search_breadth_of_its_recall(server: EngramServer, space: str) -> None:
    rng = random.Random(5)
    vectors = [unit_vector(DIM, rng) for _ in range(N)]
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        answers = [a async for a in client.observe_many(eg.Episode(id=f"m{i}", embedding=v) for i, v in enumerate(vectors))]
        assert sum(isinstance(a, eg.Ack) for a in answers) == N

        async def indexed() -> bool:
            return (await client.describe_space()).indexed_count == N

        await until(indexed, 60.0, f"{N} memories to be indexed")
        for _ in range(20):
            q = unit_vector(DIM, rng)
            exact = sorted(range(N), key=lambda i: -sum(a * b for a, b in zip(q, vectors[i])))[:10]
            got = await client.recall(eg.Cue(embedding=q, max_results=10, ef_search=N))
            assert [m.memory_id for m in got.memories] == [f"m{i}" for i in exact]
        with pytest.raises(eg.InvalidArgument, match="cue.ef_search"):
            await client.recall(eg.Cue(embedding=vectors[0], ef_search=5000))
