"""The client's pure logic, without a server: numbering and resume
bookkeeping, pacing, backoff, RetryInfo parsing, input conversion."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from typing import List

import grpc
import grpc.aio
import pytest

import engram_grpc as eg
from engram_grpc import _convert
from engram_grpc._outstanding import Entry, Outstanding, Retry
from engram_grpc._pacer import Pacer
from engram_grpc._proto.engram.v1 import memory_pb2, streaming_pb2, types_pb2
from engram_grpc._rpc_status import retry_delay_from_details

ACCEPTED = streaming_pb2.ObservationAck.ACK_ACCEPTED
REJECTED = streaming_pb2.ObservationAck.ACK_REJECTED
Reason = streaming_pb2.ObservationAck


def _ack(wire: int, status: int = ACCEPTED, reason: int = 0, retry_after_ms: int = 0) -> streaming_pb2.ObservationAck:
    return streaming_pb2.ObservationAck(
        sequence_number=wire, status=status, reason=reason, retry_after_ms=retry_after_ms, memory_id=f"m{wire}"
    )


async def test_outstanding_numbers_retries_and_resumes() -> None:
    loop = asyncio.get_running_loop()
    resolved: List[int] = []
    out = Outstanding(eg.RetryPolicy(max_retries=1, default_delay=0.1, max_delay=5.0), lambda: resolved.append(1))
    futures = []
    for seq in (1, 2, 3):
        f: "asyncio.Future[eg.Answer]" = loop.create_future()
        futures.append(f)
        out.push(Entry(seq, types_pb2.Episode(id=f"e{seq}"), 0, f), 0.0)
    wires = [out.take_next().observation.sequence_number for _ in range(3)]
    assert wires == [1, 2, 3]
    # An ack out of order is a protocol error.
    with pytest.raises(eg.ProtocolError):
        out.on_ack(_ack(2), 0.0)
    assert isinstance(out.on_ack(_ack(1), 0.0), eg.Ack)
    # Overloaded: retried after the hint, under a new wire number.
    retry = out.on_ack(_ack(2, REJECTED, Reason.REJECT_OVERLOADED, 250), 10.0)
    assert isinstance(retry, Retry) and retry.delay == 0.25
    assert out.next_send_at() == 10.25
    # The connection breaks; the server answered up to 2: resend 3 as 3.
    assert [r.observation.sequence_number for r in out.resume(2)] == [3]
    with pytest.raises(ValueError):
        out.resume(4)  # answers for numbers never sent
    with pytest.raises(ValueError):
        out.resume(0)  # forgot answers the client has
    # A lost session: everything on the wire waits again, numbered from 1.
    out.restart_session(11.0)
    again = [out.take_next().observation for _ in range(2)]
    assert [(o.sequence_number, o.episode.id) for o in again] == [(1, "e2"), (2, "e3")]
    # Second overload of one observation with max_retries=1: handed over.
    rejection = out.on_ack(_ack(1, REJECTED, Reason.REJECT_OVERLOADED, 100), 11.0)
    assert isinstance(rejection, eg.Rejection) and rejection.reason == eg.RejectReason.OVERLOADED
    assert rejection.retry_after == 0.1 and rejection.episode_id == "e2" and rejection.retries == 1
    ack3 = out.on_ack(_ack(2), 11.0)
    assert isinstance(ack3, eg.Ack) and ack3.sequence_number == 3 and ack3.wire_sequence == 2
    assert [f.done() for f in futures] == [True, True, True] and len(resolved) == 3 and len(out) == 0
    assert futures[1].result() == rejection


def test_pacer_spaces_sends_and_ignores_unusable_rates() -> None:
    p = Pacer()
    p.set_rate(0.0)
    p.set_rate(math.nan)
    assert p.rate is None and p.ready_at() is None
    p.set_rate(10.0)
    p.on_sent(100.0)
    assert p.ready_at() == pytest.approx(100.1)
    p.on_sent(100.13)  # late: stays on the grid
    assert p.ready_at() == pytest.approx(100.2)
    p.on_sent(105.0)  # idle: no burst
    assert p.ready_at() == pytest.approx(105.1)
    p.set_rate(0.01)
    assert p.rate == 1.0
    p.clear()
    assert p.rate is None and p.ready_at() is None


def test_backoff_grows_caps_and_jitters() -> None:
    b = eg.BackoffPolicy(initial=0.1, max=2.0, multiplier=2.0)
    assert [round(b.delay(n, 1.0), 3) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert b.delay(3, 0.0) == pytest.approx(0.4)
    assert eg.RetryPolicy(max_delay=1.0).delay(60_000) == 1.0
    assert eg.RetryPolicy(default_delay=0.05).delay(0) == 0.05


def _len(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_retry_info_is_read_from_status_details() -> None:
    from google.protobuf import duration_pb2

    duration = duration_pb2.Duration(seconds=1, nanos=500_000_000).SerializeToString()
    retry_info = b"\x0a" + _len(len(duration)) + duration
    type_url = b"type.googleapis.com/google.rpc.RetryInfo"
    any_msg = b"\x0a" + _len(len(type_url)) + type_url + b"\x12" + _len(len(retry_info)) + retry_info
    message = b"queue full"
    status = b"\x08\x08" + b"\x12" + _len(len(message)) + message + b"\x1a" + _len(len(any_msg)) + any_msg
    assert retry_delay_from_details(status) == 1.5
    assert retry_delay_from_details(b"\x08\x08") is None
    assert retry_delay_from_details(b"\xff") is None  # garbage: no hint, no crash
    assert retry_delay_from_details(None) is None


def test_episode_conversion() -> None:
    np = pytest.importorskip("numpy")
    vec = np.arange(1, 5, dtype=np.float64)
    for value in (vec, vec.astype(np.float32), [1.0, 2.0, 3.0, 4.0], (1, 2, 3, 4)):
        msg = _convert.episode_to_proto({"embedding": value, "what": "w"}, assign_id=True)
        assert list(msg.embedding) == [1.0, 2.0, 3.0, 4.0] and msg.what == "w" and len(msg.id) == 36
    assert _convert.episode_to_proto(eg.Episode(embedding=[1.0], id="x"), assign_id=True).id == "x"
    with pytest.raises(TypeError):
        _convert.episode_to_proto({"embedding": np.ones((2, 2))})
    with pytest.raises(TypeError):
        _convert.episode_to_proto({"what": "no embedding"})
    with pytest.raises(TypeError):
        _convert.episode_to_proto({"embedding": "text"})
    cue = _convert.cue_to_proto(np.ones(3))
    assert list(cue.embedding) == [1.0, 1.0, 1.0]
    assert _convert.cue_to_proto({"embedding": [1.0], "max_results": 3}).max_results == 3


def test_unauthorized_rejection_is_handed_over_not_retried() -> None:
    loop = asyncio.new_event_loop()
    try:
        out = Outstanding(eg.RetryPolicy(max_retries=5), lambda: None)
        f: "asyncio.Future[eg.Answer]" = loop.create_future()
        out.push(Entry(1, types_pb2.Episode(id="e1"), 0, f), 0.0)
        out.take_next()
        answer = out.on_ack(_ack(1, REJECTED, Reason.REJECT_UNAUTHORIZED), 0.0)
        assert isinstance(answer, eg.Rejection) and answer.reason == eg.RejectReason.UNAUTHORIZED
        assert answer.retries == 0 and f.result() == answer and len(out) == 0
        assert not eg.RejectReason.UNAUTHORIZED.retryable
        assert eg.Rejected(answer).reason == eg.RejectReason.UNAUTHORIZED
    finally:
        loop.close()


def _rpc_error(code: "grpc.StatusCode", details: str) -> "grpc.aio.AioRpcError":
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def test_auth_status_codes_map_to_typed_errors() -> None:
    from engram_grpc.errors import from_rpc_error, is_transient

    unauth = from_rpc_error(_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "missing API key"))
    assert type(unauth) is eg.Unauthenticated and unauth.message == "missing API key"
    assert unauth.code == grpc.StatusCode.UNAUTHENTICATED and str(unauth) == "missing API key"
    denied = from_rpc_error(_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "key 'x' lacks write on space 'y'"))
    assert type(denied) is eg.PermissionDenied and denied.message == "key 'x' lacks write on space 'y'"
    assert isinstance(unauth, eg.EngramError) and isinstance(denied, eg.EngramError)
    # Neither is worth a reconnect: the same key would be refused again.
    assert not is_transient(unauth) and not is_transient(denied)


def test_api_key_and_tls_options() -> None:
    from engram_grpc._connection import auth_metadata, channel_options, normalize_target, resolve_target

    secret = "ek_s3cr3t-value"
    options = eg.ClientOptions(api_key=secret, tls=True, root_certificates=b"-----BEGIN CERTIFICATE-----")
    assert secret not in repr(options) and "BEGIN CERTIFICATE" not in repr(options)
    assert auth_metadata(options) == (("authorization", f"Bearer {secret}"),)
    assert auth_metadata(eg.ClientOptions()) is None and auth_metadata(eg.ClientOptions(api_key="")) is None
    with pytest.raises(ValueError) as bad_key:
        eg.ClientOptions(api_key="two words")
    assert "two words" not in str(bad_key.value)
    with pytest.raises(ValueError):
        eg.ClientOptions(api_key="line\nbreak")
    with pytest.raises(TypeError):
        eg.ClientOptions(root_certificates="pem as str")  # type: ignore[arg-type]

    plain = eg.ClientOptions()
    assert resolve_target("localhost:50051", plain) == ("localhost:50051", False)
    assert resolve_target("http://localhost:50051/", plain) == ("localhost:50051", False)
    assert resolve_target("https://localhost:50051", plain) == ("localhost:50051", True)
    assert resolve_target("grpcs://localhost:50051", plain) == ("localhost:50051", True)
    assert resolve_target("localhost:50051", eg.ClientOptions(tls=True)) == ("localhost:50051", True)
    assert normalize_target("grpcs://h:1") == "h:1" and normalize_target("grpc://h:1") == "h:1"
    # Contradictions fail rather than fall back to plaintext.
    with pytest.raises(ValueError):
        resolve_target("http://localhost:50051", eg.ClientOptions(tls=True))
    with pytest.raises(ValueError):
        resolve_target("localhost:50051", eg.ClientOptions(root_certificates=b"pem"))
    with pytest.raises(ValueError):
        eg.StreamingClient("localhost:50051", tls_server_name="localhost")
    assert resolve_target("https://h:1", eg.ClientOptions(root_certificates=b"pem")) == ("h:1", True)

    named = dict(channel_options(eg.ClientOptions(tls=True, tls_server_name="engram.internal")))
    assert named["grpc.ssl_target_name_override"] == "engram.internal"
    assert "grpc.ssl_target_name_override" not in dict(channel_options(plain))
    client = eg.StreamingClient("https://127.0.0.1:1", api_key=secret)
    assert client.target == "127.0.0.1:1" and secret not in repr(client.options)


def test_memory_filter_conversion() -> None:
    import dataclasses

    f = eg.MemoryFilter(
        tags_all=["a", "b"], tags_any=("c",), tags_none=["d"], metadata={"user": "ada", "source": ["chat", "mail"]}
    )
    # Stored as tuples and a copy: the caller's lists can change afterwards.
    assert f.tags_all == ("a", "b") and f.metadata == {"user": "ada", "source": ("chat", "mail")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.tags_all = ("x",)  # type: ignore[misc]
    same = eg.MemoryFilter(tags_all=("a", "b"), tags_any=["c"], tags_none=("d",), metadata={"source": ("chat", "mail"), "user": "ada"})
    assert f == same and hash(f) == hash(same) and len({f, same}) == 1
    msg = _convert.memory_filter_to_proto(f)
    assert list(msg.tags_all) == ["a", "b"] and list(msg.tags_any) == ["c"] and list(msg.tags_none) == ["d"]
    # A string is one value (equals), a sequence several (in).
    assert [(c.key, list(c.values)) for c in msg.metadata] == [("user", ["ada"]), ("source", ["chat", "mail"])]
    # A dict with the same keys converts the same.
    as_dict = {"tags_all": ["a", "b"], "tags_any": ["c"], "tags_none": ["d"], "metadata": {"user": "ada", "source": ["chat", "mail"]}}
    assert _convert.memory_filter_to_proto(as_dict) == msg
    # Empty: an empty message (the server matches everything); the server,
    # not the client, refuses empty tags and keys without values.
    assert _convert.memory_filter_to_proto(eg.MemoryFilter()) == types_pb2.MemoryFilter()
    loose = _convert.memory_filter_to_proto(eg.MemoryFilter(tags_all=[""], metadata={"user": []}))
    assert list(loose.tags_all) == [""] and [(c.key, list(c.values)) for c in loose.metadata] == [("user", [])]
    # Wrong types fail before anything is sent.
    for bad in (
        {"tags_all": "a"},
        {"tags_any": [1]},
        {"tags_none": b"x"},
        {"metadata": {"user": 5}},
        {"metadata": {"user": [b"ada"]}},
        {"metadata": {1: "x"}},
        {"metadata": ["user"]},
    ):
        with pytest.raises(TypeError):
            _convert.memory_filter_to_proto(bad)
    with pytest.raises(TypeError, match="unknown MemoryFilter field"):
        _convert.memory_filter_to_proto({"tags": ["a"]})
    with pytest.raises(TypeError):
        _convert.memory_filter_to_proto(["a"])  # type: ignore[arg-type]


def test_recall_request_carries_the_filter() -> None:
    f = eg.MemoryFilter(tags_any=["x"], metadata={"user": ["ada", "bob"]})
    wire = _convert.memory_filter_to_proto(f)
    # No filter: the field stays unset.
    assert not _convert.recall_request("s", [1.0], False).cue.HasField("filter")
    assert not _convert.recall_request("s", eg.Cue(embedding=[1.0]), False).cue.HasField("filter")
    # As recall(..., filter=), as the cue's field, in a dict cue, with a proto cue.
    for cue, given in (
        ([1.0], f),
        (eg.Cue(embedding=[1.0], max_results=3), f),
        (eg.Cue(embedding=[1.0], max_results=3, filter=f), None),
        ({"embedding": [1.0], "filter": {"tags_any": ["x"], "metadata": {"user": ["ada", "bob"]}}}, None),
        ({"embedding": [1.0]}, {"tags_any": ["x"], "metadata": {"user": ("ada", "bob")}}),
    ):
        request = _convert.recall_request("s", cue, False, 5, given)
        assert request.cue.filter == wire and list(request.cue.embedding) == [1.0] and request.batch_size == 5
    proto_cue = types_pb2.Cue(embedding=[1.0], max_results=2)
    request = _convert.recall_request("s", proto_cue, False, filter=f)
    assert request.cue.filter == wire and request.cue.max_results == 2
    assert not proto_cue.HasField("filter")  # the caller's message is not changed
    # Given twice: refused rather than one silently winning.
    with pytest.raises(ValueError, match="twice"):
        _convert.recall_request("s", eg.Cue(embedding=[1.0], filter=f), False, filter=f)
    with pytest.raises(ValueError, match="twice"):
        _convert.recall_request("s", types_pb2.Cue(embedding=[1.0], filter=wire), False, filter=f)
    assert eg.MemoryFilter in (getattr(eg, name) for name in eg.__all__)


def test_recency_half_life_conversion() -> None:
    # Unset (None): the field stays 0 on the wire (the server ranks by similarity).
    assert _convert.recall_request("s", [1.0], False).cue.recency_half_life_seconds == 0.0
    assert _convert.cue_to_proto(eg.Cue(embedding=[1.0])).recency_half_life_seconds == 0.0
    # As recall(..., recency_half_life_seconds=), as the cue's field, in a dict cue; ints become floats.
    week = 7 * 86400.0
    for cue, given in (
        ([1.0], week),
        (eg.Cue(embedding=[1.0], max_results=3), week),
        (eg.Cue(embedding=[1.0], max_results=3, recency_half_life_seconds=week), None),
        ({"embedding": [1.0], "recency_half_life_seconds": 604800}, None),
        ({"embedding": [1.0]}, 604800),
    ):
        request = _convert.recall_request("s", cue, False, 5, None, given)
        assert request.cue.recency_half_life_seconds == week and list(request.cue.embedding) == [1.0]
    # With a filter too, each way.
    f = eg.MemoryFilter(tags_all=["x"])
    request = _convert.recall_request("s", eg.Cue(embedding=[1.0], filter=f), False, recency_half_life_seconds=60.0)
    assert request.cue.recency_half_life_seconds == 60.0 and list(request.cue.filter.tags_all) == ["x"]
    # A proto cue: set on a copy, the caller's message unchanged.
    proto_cue = types_pb2.Cue(embedding=[1.0], max_results=2)
    request = _convert.recall_request("s", proto_cue, False, recency_half_life_seconds=60.0)
    assert request.cue.recency_half_life_seconds == 60.0 and request.cue.max_results == 2
    assert proto_cue.recency_half_life_seconds == 0.0
    # Out-of-range values go to the server as given (it refuses them naming the field).
    assert _convert.cue_to_proto([1.0], recency_half_life_seconds=-5).recency_half_life_seconds == -5.0
    # Given twice: refused rather than one silently winning.
    with pytest.raises(ValueError, match="twice"):
        _convert.recall_request(
            "s", eg.Cue(embedding=[1.0], recency_half_life_seconds=1.0), False, recency_half_life_seconds=2.0
        )
    with pytest.raises(ValueError, match="twice"):
        _convert.recall_request(
            "s", types_pb2.Cue(embedding=[1.0], recency_half_life_seconds=1.0), False, recency_half_life_seconds=2.0
        )
    # Wrong types fail before anything is sent.
    for bad in ("60", True, timedelta(days=7), [60.0]):
        with pytest.raises(TypeError, match="recency_half_life_seconds"):
            _convert.cue_to_proto({"embedding": [1.0], "recency_half_life_seconds": bad})
    with pytest.raises(TypeError, match="total_seconds"):
        _convert.cue_to_proto([1.0], recency_half_life_seconds=timedelta(days=7))  # type: ignore[arg-type]


def test_recalled_memory_carries_score_and_recency_weight() -> None:
    def response(score: float = 0.0, recency_weight: float = 0.0) -> types_pb2.RecallResponse:
        """0, 0: the fields unset, as a server from before recency weighting sends."""
        memory = types_pb2.RecalledMemory(
            episode=types_pb2.Episode(id="a"), similarity=0.5, score=score, recency_weight=recency_weight
        )
        return types_pb2.RecallResponse(memories=[memory], snapshot_sequence=3)

    weighted = _convert.recall_result(response(score=0.25, recency_weight=0.5), recency=True).memories[0]
    assert (weighted.memory_id, weighted.similarity, weighted.score, weighted.recency_weight) == ("a", 0.5, 0.25, 0.5)
    plain = _convert.recall_result(response(score=0.5, recency_weight=1.0)).memories[0]
    assert (plain.score, plain.recency_weight) == (0.5, 1.0)
    # A server from before recency weighting sends neither: the score is the similarity.
    old = _convert.recall_result(response()).memories[0]
    assert (old.score, old.recency_weight) == (0.5, 1.0)
    # With recency, a weight that underflowed to 0 is kept as sent.
    ancient = _convert.recall_result(response(), recency=True).memories[0]
    assert (ancient.score, ancient.recency_weight) == (0.0, 0.0)


def test_expiry_conversion() -> None:
    # Neither: both fields unset on the wire (the space's default applies).
    plain = _convert.episode_to_proto(eg.Episode(embedding=[1.0]))
    assert not plain.HasField("expires_at") and plain.ttl_seconds == 0.0
    # expires_at like when: an aware datetime, a naive one (UTC), epoch seconds.
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    for given in (at, at.replace(tzinfo=None), at.astimezone(timezone(timedelta(hours=-5))), at.timestamp()):
        msg = _convert.episode_to_proto({"embedding": [1.0], "expires_at": given})
        assert msg.expires_at.seconds == int(at.timestamp()), given
        assert abs(msg.expires_at.nanos - 678_000_000) < 1000, given  # epoch seconds: float precision
        assert msg.ttl_seconds == 0.0
    with pytest.raises(TypeError, match="datetime"):
        _convert.episode_to_proto({"embedding": [1.0], "expires_at": "2030-01-02"})
    # ttl_seconds: ints become floats; out-of-range values go to the server as given (it names the field).
    for given, wire in ((3600, 3600.0), (0.5, 0.5), (-1, -1.0), (math.inf, math.inf)):
        msg = _convert.episode_to_proto(eg.Episode(embedding=[1.0], ttl_seconds=given))
        assert msg.ttl_seconds == wire and not msg.HasField("expires_at")
    # Both: sent as given, for the server to refuse (INVALID_ARGUMENT / a rejection on a stream).
    both = _convert.episode_to_proto(eg.Episode(embedding=[1.0], expires_at=at, ttl_seconds=60))
    assert both.HasField("expires_at") and both.ttl_seconds == 60.0
    # 0 would be unset on the wire: refused before sending; wrong types too.
    with pytest.raises(ValueError, match="ttl_seconds must be above 0"):
        _convert.episode_to_proto(eg.Episode(embedding=[1.0], ttl_seconds=0))
    for bad in ("60", True, [60.0]):
        with pytest.raises(TypeError, match="ttl_seconds"):
            _convert.episode_to_proto({"embedding": [1.0], "ttl_seconds": bad})
    with pytest.raises(TypeError, match="total_seconds"):
        _convert.episode_to_proto({"embedding": [1.0], "ttl_seconds": timedelta(hours=1)})
    # The space's default: None unset (no presence on the wire), 0 set (none), a number set.
    assert _convert.default_ttl_seconds(None) is None
    assert _convert.default_ttl_seconds(0) == 0.0 and _convert.default_ttl_seconds(86400) == 86400.0
    with pytest.raises(TypeError, match="default_ttl_seconds"):
        _convert.default_ttl_seconds("1d")


def test_expiry_in_answers() -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    expiring = types_pb2.Episode(id="a")
    expiring.expires_at.FromDatetime(at)
    response = types_pb2.RecallResponse(
        memories=[
            types_pb2.RecalledMemory(episode=expiring, similarity=0.5),
            types_pb2.RecalledMemory(episode=types_pb2.Episode(id="b"), similarity=0.4),
        ]
    )
    first, second = _convert.recall_result(response).memories
    assert first.episode.expires_at == at and first.episode.expires_at.tzinfo is not None
    assert second.episode.expires_at is None
    info = _convert.space_info(memory_pb2.SpaceInfo(memory_space_id="s", default_ttl_seconds=3600.0, expired_count=7))
    assert (info.default_ttl_seconds, info.expired_count) == (3600.0, 7)
    none = _convert.space_info(memory_pb2.SpaceInfo(memory_space_id="s"))
    assert (none.default_ttl_seconds, none.expired_count) == (0.0, 0)


def test_acks_carry_the_cluster_token_and_recalls_send_it_as_after() -> None:
    """Cluster mode: an ack's consistency token comes through as a
    ConsistencyToken (None on a single node), and a recall's ``after``
    goes on the wire."""
    with_token = streaming_pb2.ObservationAck(
        sequence_number=3,
        status=streaming_pb2.ObservationAck.ACK_ACCEPTED,
        memory_id="m",
        token=types_pb2.ConsistencyToken(partition=2, sequence=41),
    )
    ack = _convert.ack(with_token, 3, 0)
    assert ack.token == eg.ConsistencyToken(partition=2, sequence=41)
    plain = streaming_pb2.ObservationAck(
        sequence_number=3, status=streaming_pb2.ObservationAck.ACK_ACCEPTED, memory_id="m"
    )
    assert _convert.ack(plain, 3, 0).token is None
    remembered = _convert.remember_result(
        memory_pb2.RememberResponse(memory_id="m", token=types_pb2.ConsistencyToken(partition=1, sequence=7))
    )
    assert remembered.token == eg.ConsistencyToken(partition=1, sequence=7)
    request = _convert.recall_request("s", [1.0, 0.0], False, after=eg.ConsistencyToken(partition=2, sequence=41))
    assert request.HasField("after")
    assert (request.after.partition, request.after.sequence) == (2, 41)
    assert not _convert.recall_request("s", [1.0, 0.0], False).HasField("after")
