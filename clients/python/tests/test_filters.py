"""Recall filters on tags and metadata against a real server: a filtered
recall returns only matching memories, min(k, matching) of them (the exact
filtered top-k while a space is small enough to be searched exhaustively),
finds matches far from the cue, includes memories not yet indexed, and a
bad filter is refused naming its field.

Cues here set ``similarity_threshold=-1``: the default (0) would also drop
the matches with a negative similarity."""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Mapping, Sequence, Set, Tuple

import pytest

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector, until

DIM = 8
TAGS = ("red", "green", "blue")
USERS = ("ada", "bob", "cy")

#: Filters over the memories of :func:`_memories`: each field alone, together, none matching, empty.
FILTERS = (
    eg.MemoryFilter(tags_all=["red"]),
    eg.MemoryFilter(tags_all=["red", "green"]),
    eg.MemoryFilter(tags_any=["green", "blue"]),
    eg.MemoryFilter(tags_none=["red"]),
    eg.MemoryFilter(tags_all=["red"], tags_any=["green", "blue"], tags_none=["blue"]),
    eg.MemoryFilter(metadata={"user": "ada"}),
    eg.MemoryFilter(metadata={"user": ["ada", "bob"]}),
    eg.MemoryFilter(metadata={"user": "ada", "source": "mail"}),
    eg.MemoryFilter(tags_none=["green"], metadata={"user": ["bob", "cy"], "source": ["chat", "mail"]}),
    eg.MemoryFilter(tags_all=["nowhere"]),
    eg.MemoryFilter(metadata={"user": "nobody"}),
    eg.MemoryFilter(),
)


def _memories(rng: random.Random, n: int, prefix: str = "m") -> List[eg.Episode]:
    """Random unit vectors, each tag with probability 0.4, a user (three in
    four) and a source."""
    out = []
    for i in range(n):
        metadata = {"source": rng.choice(("chat", "mail"))}
        if rng.random() < 0.75:
            metadata["user"] = rng.choice(USERS)
        tags = [t for t in TAGS if rng.random() < 0.4]
        out.append(eg.Episode(id=f"{prefix}{i}", embedding=unit_vector(DIM, rng), tags=tags, metadata=metadata))
    return out


def _matches(f: eg.MemoryFilter, tags: Sequence[str], metadata: Mapping[str, str]) -> bool:
    """The filter's meaning, spelled out independently of the server."""
    wanted = {k: [v] if isinstance(v, str) else list(v) for k, v in f.metadata.items()}
    return (
        all(t in tags for t in f.tags_all)
        and (not f.tags_any or any(t in tags for t in f.tags_any))
        and not any(t in tags for t in f.tags_none)
        and all(k in metadata and metadata[k] in values for k, values in wanted.items())
    )


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _exact(memories: Sequence[eg.Episode], q: Sequence[float], f: eg.MemoryFilter, k: int) -> List[Tuple[str, float]]:
    """The exact filtered top-k: (id, similarity), best first."""
    scored = [(m.id, _dot(q, m.embedding)) for m in memories if _matches(f, m.tags, m.metadata)]
    return sorted(scored, key=lambda s: -s[1])[:k]


def _check(
    what: str, result: eg.RecallResult, q: Sequence[float], want: List[Tuple[str, float]], by_id: Mapping[str, eg.Episode]
) -> None:
    """``result`` (a recall by ``q``) is the exact top-k ``want``, up to the
    order of near-ties: as many memories, each at its own similarity to
    ``q``, those similarities the exact top-k's."""
    got = [(m.memory_id, m.similarity) for m in result.memories]
    assert len(got) == len(want), f"{what}: {len(got)} memories, want {len(want)}"
    assert len({i for i, _ in got}) == len(got), f"{what}: a memory twice"
    for (gid, gsim), (_, wsim) in zip(got, want):
        assert gsim == pytest.approx(wsim, abs=1e-4), f"{what}: got {got}, want {want}"
        assert gsim == pytest.approx(_dot(q, by_id[gid].embedding), abs=1e-4), f"{what}: {gid}"


def _episode_matches(f: eg.MemoryFilter, m: eg.RecalledMemory) -> bool:
    return _matches(f, m.episode.tags, m.episode.metadata)


async def _wait_indexed(client: eg.StreamingClient, n: int, timeout: float = 60.0) -> None:
    async def indexed() -> bool:
        return (await client.describe_space()).indexed_count == n

    await until(indexed, timeout, f"{n} memories to be indexed")


async def _observe_all(client: eg.StreamingClient, episodes: Sequence[eg.Episode]) -> None:
    answers = [a async for a in client.observe_many(episodes)]
    assert all(isinstance(a, eg.Ack) for a in answers), [a for a in answers if not a.accepted][:3]


async def test_filtered_recall_returns_only_matching_memories_min_k_of_them(server: EngramServer, space: str) -> None:
    rng = random.Random(16)
    memories = _memories(rng, 300)
    by_id = {m.id: m for m in memories}
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        await _observe_all(client, memories)
        await _wait_indexed(client, len(memories))
        for f in FILTERS:
            matching = {m.id for m in memories if _matches(f, m.tags, m.metadata)}
            q = unit_vector(DIM, rng)
            # k at least the matching count: every matching memory, nothing else.
            everything = await client.recall(eg.Cue(embedding=q, max_results=1000, similarity_threshold=-1.0), filter=f)
            assert {m.memory_id for m in everything.memories} == matching, f
            assert all(_episode_matches(f, m) for m in everything.memories), f
            _check(f"{f} k=1000", everything, q, _exact(memories, q, f, 1000), by_id)
            # A smaller k: min(k, matching), the exact filtered top-k.
            for k in (1, 5, 40):
                top = await client.recall(eg.Cue(embedding=q, max_results=k, similarity_threshold=-1.0), filter=f)
                assert len(top.memories) == min(k, len(matching)), (f, k)
                assert {m.memory_id for m in top.memories} <= matching
                _check(f"{f} k={k}", top, q, _exact(memories, q, f, k), by_id)
            # Streamed in batches, and the filter as the cue's own field (a dict here): the same memories.
            cue: Dict[str, Any] = {
                "embedding": q,
                "max_results": 40,
                "similarity_threshold": -1.0,
                "filter": {"tags_all": list(f.tags_all), "tags_any": list(f.tags_any),
                           "tags_none": list(f.tags_none), "metadata": dict(f.metadata)},
            }
            batches = [b async for b in client.recall_stream(cue, batch_size=7)]
            streamed = [m.memory_id for b in batches for m in b.memories]
            assert streamed == [m.memory_id for m in top.memories], f
            assert not batches[-1].more
        # Without a filter: every memory.
        unfiltered = await client.recall(eg.Cue(embedding=q, max_results=1000, similarity_threshold=-1.0))
        assert len(unfiltered.memories) == len(memories)


async def test_a_selective_filter_finds_matches_far_from_the_cue(server: EngramServer, space: str) -> None:
    """1,500 memories close to the cue (more than the server searches
    exhaustively) and 3 tagged "rare" ones opposite to it: the filtered
    recall returns the rare ones, which no unfiltered top-k would reach."""
    dim, near = 16, 1500
    rng = random.Random(17)
    q = unit_vector(dim, rng)

    def around(centre: List[float], spread: float) -> List[float]:
        v = [c + spread * x for c, x in zip(centre, unit_vector(dim, rng))]
        norm = _dot(v, v) ** 0.5
        return [x / norm for x in v]

    memories = [
        eg.Episode(id=f"n{i}", embedding=around(q, 0.5), tags=["even"] if i % 2 == 0 else [], metadata={"kind": "near"})
        for i in range(near)
    ]
    opposite = [-x for x in q]
    rare = [
        eg.Episode(id=f"r{i}", embedding=around(opposite, 0.3), tags=["rare"], metadata={"kind": "rare"})
        for i in range(3)
    ]
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=dim)
        await _observe_all(client, memories[:700] + rare + memories[700:])
        await _wait_indexed(client, near + len(rare))

        plain = await client.recall(eg.Cue(embedding=q, max_results=100, similarity_threshold=-1.0))
        assert len(plain.memories) == 100 and not any(m.memory_id.startswith("r") for m in plain.memories)
        want = [r.id for r in sorted(rare, key=lambda r: -_dot(q, r.embedding))]
        for f in (eg.MemoryFilter(tags_all=["rare"]), eg.MemoryFilter(metadata={"kind": "rare"}),
                  eg.MemoryFilter(tags_any=["rare"], tags_none=["even"], metadata={"kind": ["rare", "other"]})):
            got = await client.recall(eg.Cue(embedding=q, max_results=10, similarity_threshold=-1.0), filter=f)
            assert [m.memory_id for m in got.memories] == want, f
            assert all(m.similarity < 0 and m.indexed for m in got.memories)
            two = await client.recall(eg.Cue(embedding=q, max_results=2, similarity_threshold=-1.0), filter=f)
            assert [m.memory_id for m in two.memories] == want[:2], f
        # The cue's similarity_threshold still applies: at the default (0) none of them is similar enough.
        assert (await client.recall(q, filter=eg.MemoryFilter(tags_all=["rare"]))).memories == ()
        # A broad filter (half the space) through a narrow search still fills k with matching memories.
        even = await client.recall(
            eg.Cue(embedding=q, max_results=10, ef_search=10, similarity_threshold=-1.0), filter={"tags_all": ["even"]}
        )
        assert len(even.memories) == 10 and all("even" in m.episode.tags for m in even.memories)
        never = await client.recall(
            eg.Cue(embedding=q, max_results=10, similarity_threshold=-1.0), filter=eg.MemoryFilter(tags_all=["even", "rare"])
        )
        assert never.memories == ()


async def test_memories_not_yet_indexed_are_included(make_server: Callable[..., EngramServer], space: str) -> None:
    server = make_server("--fault-injection", "--wal-sync", "interval")
    rng = random.Random(18)
    first = _memories(rng, 60, "i")
    later = _memories(rng, 60, "f")
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        await _observe_all(client, first)
        await _wait_indexed(client, len(first))
        server.post("/v1/admin/indexing/pause")
        q = unit_vector(DIM, rng)
        # Not indexed, tagged, and the closest memory to the cue there is.
        closest = eg.Episode(id="closest", embedding=q, tags=["red", "green", "blue"],
                             metadata={"user": "ada", "source": "mail"})
        await _observe_all(client, later + [closest])
        info = await client.describe_space()
        assert info.count == len(first) + len(later) + 1 and info.indexed_count == len(first), info

        memories = first + later + [closest]
        by_id = {m.id: m for m in memories}
        seen_fresh = 0
        for f in FILTERS:
            matching = {m.id for m in memories if _matches(f, m.tags, m.metadata)}
            everything = await client.recall(eg.Cue(embedding=q, max_results=1000, similarity_threshold=-1.0), filter=f)
            assert {m.memory_id for m in everything.memories} == matching, f
            fresh = {m.memory_id for m in everything.memories if not m.indexed}
            assert fresh == {i for i in matching if not i.startswith("i")}, f
            seen_fresh += len(fresh)
            _check(f"{f} k=1000", everything, q, _exact(memories, q, f, 1000), by_id)
            top = await client.recall(eg.Cue(embedding=q, max_results=5, similarity_threshold=-1.0), filter=f)
            assert len(top.memories) == min(5, len(matching)), f
            _check(f"{f} k=5", top, q, _exact(memories, q, f, 5), by_id)
            if "closest" in matching:
                assert top.memories[0].memory_id == "closest" and not top.memories[0].indexed
        assert seen_fresh > 0
        info = await client.describe_space()
        assert info.indexed_count == len(first), "indexing went on while paused: the test proved nothing"


async def test_a_bad_filter_is_invalid_argument_naming_the_field(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        await client.create_space(dimension=DIM)
        await client.observe(eg.Episode(id="one", embedding=[1.0] * DIM, tags=["red"]))
        q = [1.0] * DIM
        with pytest.raises(eg.InvalidArgument, match="cue.filter.tags_all"):
            await client.recall(q, filter=eg.MemoryFilter(tags_all=[""]))
        with pytest.raises(eg.InvalidArgument, match="cue.filter.tags_all"):
            [b async for b in client.recall_stream(q, filter=eg.MemoryFilter(tags_all=["red", ""]))]
        with pytest.raises(eg.InvalidArgument, match="cue.filter.tags_none"):
            await client.recall(eg.Cue(embedding=q, filter=eg.MemoryFilter(tags_none=[""])))
        with pytest.raises(eg.InvalidArgument, match="key 'user' has no values"):
            await client.recall(q, filter=eg.MemoryFilter(metadata={"user": []}))
        with pytest.raises(eg.InvalidArgument, match="cue.filter.metadata"):
            await client.recall(q, filter=eg.MemoryFilter(metadata={"": "x"}))
        with pytest.raises(eg.InvalidArgument, match="the limit is 256"):
            await client.recall(q, filter=eg.MemoryFilter(tags_any=[f"t{i}" for i in range(257)]))
        # Caught before sending: the wrong types, a filter given twice.
        with pytest.raises(TypeError):
            await client.recall(q, filter=eg.MemoryFilter(tags_all="red"))
        with pytest.raises(ValueError, match="twice"):
            await client.recall(eg.Cue(embedding=q, filter=eg.MemoryFilter()), filter=eg.MemoryFilter())
        # 256 terms in all are fine.
        ok = await client.recall(q, filter=eg.MemoryFilter(tags_all=["red"], tags_any=[f"t{i}" for i in range(254)] + ["red"]))
        assert [m.memory_id for m in ok.memories] == ["one"]


def test_the_sync_client_filters(server: EngramServer, space: str) -> None:
    rng = random.Random(19)
    memories = _memories(rng, 40)
    f = eg.MemoryFilter(tags_any=["red"], metadata={"user": ["ada", "bob"]})
    matching: Set[str] = {m.id for m in memories if _matches(f, m.tags, m.metadata)}
    assert matching
    with eg.Client(server.target, space=space) as client:
        client.create_space(dimension=DIM)
        assert all(a.accepted for a in client.observe_many(memories))
        cue = eg.Cue(embedding=unit_vector(DIM, rng), max_results=100, similarity_threshold=-1.0)
        assert {m.memory_id for m in client.recall(cue, filter=f).memories} == matching
        batches = list(client.recall_stream(cue, batch_size=3, filter=f))
        assert {m.memory_id for b in batches for m in b.memories} == matching and not batches[-1].more
        top = client.recall(eg.Cue(embedding=cue.embedding, max_results=2, similarity_threshold=-1.0, filter=f))
        assert len(top.memories) == min(2, len(matching)) and all(_episode_matches(f, m) for m in top.memories)
