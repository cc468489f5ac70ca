#!/usr/bin/env python3
"""Streams 1,000 observations into a space and recalls while they flow,
with the Python client (``engram_grpc``, in ``clients/python``).

Start a server, then run the example:

    engram serve                                  # gRPC on 127.0.0.1:50051
    pip install ./clients/python                  # once, in a virtualenv
    python examples/streaming/python_client.py [--target HOST:PORT] [--space NAME]

Defaults: ``--target localhost:50051`` (or ``$ENGRAM_GRPC_ADDR``),
``--space example``, 384-dimensional random embeddings. Exits 0 when every
observation was accepted, every recall during the stream found what had
just been acked, and the space holds them all; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import Iterator, List

import engram_grpc as eg

OBSERVATIONS = 1_000
RECALL_EVERY = 100


def random_unit(dim: int, rng: random.Random) -> List[float]:
    v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


async def run(target: str, space: str, dim: int, count: int) -> List[str]:
    problems: List[str] = []
    rng = random.Random()
    run_id = f"{int(time.time())}-{rng.randrange(1 << 32):08x}"
    vectors = [random_unit(dim, rng) for _ in range(count)]

    def episodes() -> Iterator[eg.Episode]:
        for i, v in enumerate(vectors):
            yield eg.Episode(
                id=f"{run_id}-{i}", what=f"observation {i} of run {run_id}", embedding=v, tags=["example"]
            )

    async with eg.StreamingClient(target, space=space) as client:
        print(f"connected to {client.target}")
        info = await client.create_space(dimension=dim)  # idempotent for this dimension
        before = info.count
        print(f"space {space!r}: dimension {info.dimension}, {before} memories before this run")

        async def recall_just_acked(n: int, index: int, memory_id: str) -> None:
            # Runs concurrently with the stream: what was just acked is visible.
            result = await client.recall(eg.Cue(embedding=vectors[index], max_results=3))
            top = result.memories[0] if result.memories else None
            if top is None or top.memory_id != memory_id:
                problems.append(f"recall after ack {memory_id} found {top.memory_id if top else 'nothing'}")
                return
            print(
                f"  recall #{n}: top {top.memory_id} similarity {top.similarity:.3f} "
                f"({'index' if top.indexed else 'fresh tier'}), snapshot sequence {result.snapshot_sequence}"
            )

        start = time.perf_counter()
        accepted = rejected = 0
        recalls: List["asyncio.Future[None]"] = []
        async for answer in client.observe_many(episodes()):
            if isinstance(answer, eg.Rejection):
                rejected += 1
                problems.append(f"observation {answer.sequence_number} rejected: {answer.reason.name} {answer.message}")
                continue
            accepted += 1
            if accepted % 250 == 0:
                print(f"  ack #{answer.sequence_number:>4}: memory {answer.memory_id} at server sequence {answer.server_sequence}")
            if accepted % RECALL_EVERY == 0:
                recalls.append(
                    asyncio.ensure_future(recall_just_acked(len(recalls) + 1, answer.sequence_number - 1, answer.memory_id))
                )
        elapsed = time.perf_counter() - start
        await asyncio.gather(*recalls)
        print(f"{accepted} accepted, {rejected} rejected in {elapsed:.2f} s ({count / elapsed:,.0f} observations/s), {len(recalls)} recalls while streaming")

        cue = vectors[rng.randrange(count)]
        print("a streamed recall, in batches of 5:")
        async for batch in client.recall_stream(eg.Cue(embedding=cue, max_results=10), batch_size=5):
            for m in batch.memories:
                print(f"  {m.memory_id}  similarity {m.similarity:.3f}  {m.episode.what!r}")
        after = (await client.describe_space()).count
        print(f"space {space!r} now holds {after} memories")
        if accepted != count:
            problems.append(f"{accepted} of {count} observations accepted")
        if after < before + accepted:
            problems.append(f"the space holds {after}, expected at least {before + accepted}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="Stream 1,000 observations to engram and recall while streaming.")
    parser.add_argument("--target", default=os.environ.get("ENGRAM_GRPC_ADDR", eg.DEFAULT_TARGET), help="gRPC address (default: %(default)s)")
    parser.add_argument("--space", default="example", help="memory space (default: %(default)s)")
    parser.add_argument("--dimension", type=int, default=384, help="embedding dimension (default: %(default)s)")
    parser.add_argument("--count", type=int, default=OBSERVATIONS, help="observations (default: %(default)s)")
    args = parser.parse_args()
    try:
        problems = asyncio.run(run(args.target, args.space, args.dimension, args.count))
    except eg.EngramError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("OK" if not problems else f"FAILED ({len(problems)} problems)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
