"""The blocking Client (no event loop in the caller)."""

from __future__ import annotations

import random

import numpy as np
import pytest

import engram_grpc as eg
from conftest import EngramServer
from helpers import unit_vector

DIM = 8


def test_sync_client(server: EngramServer, space: str) -> None:
    rng = random.Random(10)
    with eg.Client(server.target, space=space) as client:
        assert client.create_space(dimension=DIM).dimension == DIM
        ack = client.observe(eg.Episode(id="s1", what="sync", embedding=np.ones(DIM, dtype=np.float32)))
        assert ack.memory_id == "s1" and ack.server_sequence == 1
        answers = list(client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(200)))
        assert len(answers) == 200 and all(a.accepted for a in answers)
        assert [a.sequence_number for a in answers] == list(range(2, 202))
        top = client.recall([1.0] * DIM)
        assert top.memories[0].memory_id == "s1"
        batches = list(client.recall_stream({"embedding": [1.0] * DIM, "max_results": 20}, batch_size=5))
        assert len(batches) == 4 and not batches[-1].more
        # Breaking out of an iterator early is fine.
        for _ in client.observe_many({"embedding": unit_vector(DIM, rng)} for _ in range(50)):
            break
        with pytest.raises(eg.Rejected):
            client.observe({"embedding": [1.0]})
        with pytest.raises(eg.NotFound):
            client.describe_space("missing-space")
        assert client.describe_space().count >= 201
    with pytest.raises(RuntimeError):
        client.observe({"embedding": [1.0] * DIM})
