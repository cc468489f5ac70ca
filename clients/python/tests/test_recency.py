"""Recency-weighted recall against a real server: a fact stored in three
versions (90, 30 and 1 days old, the oldest the most similar to the cue)
comes oldest first by similarity alone and newest first with a 7-day
half-life, each memory's ``score`` being ``similarity x recency_weight``;
a bad half-life is refused naming its field."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Sequence

import pytest

import engram_grpc as eg
from conftest import EngramServer

DIM = 8
DAY = 86400.0
WEEK = 7 * DAY

#: The fact's versions: (id, age in days, cosine similarity to the cue).
VERSIONS = (("v-90d", 90, 0.99), ("v-30d", 30, 0.95), ("v-1d", 1, 0.90))


def _at_similarity(similarity: float, axis: int) -> List[float]:
    """A unit vector at ``similarity`` to the cue (the first axis), leaning
    along ``axis`` (> 0) for the rest."""
    v = [0.0] * DIM
    v[0] = similarity
    v[axis] = math.sqrt(1.0 - similarity * similarity)
    return v


CUE = _at_similarity(1.0, 1)


async def _remember_versions(client: eg.StreamingClient) -> datetime:
    """Creates the space and stores the three versions; returns the time
    their ages count from."""
    await client.create_space(dimension=DIM)
    now = datetime.now(timezone.utc)
    for axis, (memory_id, days, similarity) in enumerate(VERSIONS, start=1):
        await client.remember(
            eg.Episode(
                id=memory_id,
                what=f"the office is on floor {axis} (as of {days} days ago)",
                embedding=_at_similarity(similarity, axis),
                when=now - timedelta(days=days),
            )
        )
    return now


def _ids(result: eg.RecallResult) -> List[str]:
    return [m.memory_id for m in result.memories]


def _check_by_similarity(result: eg.RecallResult) -> None:
    assert _ids(result) == ["v-90d", "v-30d", "v-1d"]
    for m, (_, _, similarity) in zip(result.memories, VERSIONS):
        assert m.similarity == pytest.approx(similarity, abs=1e-4)
        assert m.score == m.similarity and m.recency_weight == 1.0


def _check_by_recency(result: eg.RecallResult, half_life: float = WEEK) -> None:
    """Newest first; every score the similarity times a weight in (0, 1),
    that weight 0.5^(age / half-life)."""
    assert _ids(result) == ["v-1d", "v-30d", "v-90d"]
    ages: Dict[str, float] = {memory_id: days * DAY for memory_id, days, _ in VERSIONS}
    for m in result.memories:
        assert 0.0 < m.recency_weight < 1.0, m
        assert m.score == pytest.approx(m.similarity * m.recency_weight, rel=1e-6), m
        assert m.recency_weight == pytest.approx(0.5 ** (ages[m.memory_id] / half_life), rel=1e-3), m
    scores: Sequence[float] = [m.score for m in result.memories]
    assert list(scores) == sorted(scores, reverse=True)


async def test_a_half_life_puts_the_newest_version_first(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        await _remember_versions(client)
        # By similarity alone: the oldest (most similar) version first.
        _check_by_similarity(await client.recall(eg.Cue(embedding=CUE, max_results=3)))
        # With a 7-day half-life: the newest first, as recall's keyword or the cue's field.
        _check_by_recency(await client.recall(eg.Cue(embedding=CUE, max_results=3), recency_half_life_seconds=WEEK))
        _check_by_recency(await client.recall({"embedding": CUE, "recency_half_life_seconds": WEEK}))
        # Streamed one per batch: the same order across batches.
        batches = [b async for b in client.recall_stream(CUE, batch_size=1, recency_half_life_seconds=WEEK)]
        assert all(len(b.memories) == 1 for b in batches) and not batches[-1].more
        _check_by_recency(eg.RecallResult(tuple(m for b in batches for m in b.memories), batches[0].snapshot_sequence))
        # A half-life long next to the ages changes little: the oldest first again.
        long = await client.recall(CUE, recency_half_life_seconds=100 * 365.25 * DAY)
        assert _ids(long) == ["v-90d", "v-30d", "v-1d"] and all(0.99 < m.recency_weight < 1.0 for m in long.memories)


async def test_a_dissimilar_memory_keeps_its_similarity_as_score(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        now = await _remember_versions(client)
        away = [-x for x in _at_similarity(0.5, 4)]  # similarity -0.5, 60 days old
        await client.remember(eg.Episode(id="away", embedding=away, when=now - timedelta(days=60)))
        result = await client.recall(
            eg.Cue(embedding=CUE, max_results=10, similarity_threshold=-1.0), recency_half_life_seconds=WEEK
        )
        assert _ids(result) == ["v-1d", "v-30d", "v-90d", "away"]
        last = result.memories[-1]
        assert last.similarity == pytest.approx(-0.5, abs=1e-4) and last.score == last.similarity
        assert 0.0 < last.recency_weight < 1.0


async def test_a_bad_half_life_is_invalid_argument_naming_the_field(server: EngramServer, space: str) -> None:
    async with eg.StreamingClient(server.target, space=space) as client:
        await _remember_versions(client)
        for bad in (-5.0, math.inf, math.nan, 101 * 365.25 * DAY):
            with pytest.raises(eg.InvalidArgument, match="cue.recency_half_life_seconds"):
                await client.recall(CUE, recency_half_life_seconds=bad)
        with pytest.raises(eg.InvalidArgument, match="cue.recency_half_life_seconds"):
            await client.recall(eg.Cue(embedding=CUE, recency_half_life_seconds=-5))
        with pytest.raises(eg.InvalidArgument, match="cue.recency_half_life_seconds"):
            [b async for b in client.recall_stream(CUE, recency_half_life_seconds=-5)]
        # Caught before sending: a wrong type, the half-life given twice.
        with pytest.raises(TypeError, match="recency_half_life_seconds"):
            await client.recall(CUE, recency_half_life_seconds="7d")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="twice"):
            await client.recall(eg.Cue(embedding=CUE, recency_half_life_seconds=WEEK), recency_half_life_seconds=WEEK)
        # 0 is unset: by similarity alone.
        _check_by_similarity(await client.recall(CUE, recency_half_life_seconds=0))


def test_the_sync_client_weights_by_recency(server: EngramServer, space: str) -> None:
    with eg.Client(server.target, space=space) as client:
        client.create_space(dimension=DIM)
        now = datetime.now(timezone.utc)
        for axis, (memory_id, days, similarity) in enumerate(VERSIONS, start=1):
            client.remember(
                eg.Episode(id=memory_id, embedding=_at_similarity(similarity, axis), when=now - timedelta(days=days))
            )
        _check_by_similarity(client.recall(CUE))
        _check_by_recency(client.recall(CUE, recency_half_life_seconds=WEEK))
        batches = list(client.recall_stream(CUE, batch_size=2, recency_half_life_seconds=WEEK))
        assert [len(b.memories) for b in batches] == [2, 1]
        _check_by_recency(eg.RecallResult(tuple(m for b in batches for m in b.memories), batches[0].snapshot_sequence))
