"""Conversions between the public dataclasses (or dicts) and the wire messages."""

from __future__ import annotations

import dataclasses
import numbers
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional, Union

from google.protobuf import timestamp_pb2

from ._proto.engram.v1 import memory_pb2, streaming_pb2, types_pb2
from .types import (
    Ack,
    ConsistencyToken,
    Cue,
    CueLike,
    Episode,
    EpisodeLike,
    MemoryFilter,
    MemoryFilterLike,
    RecallResult,
    RecalledEpisode,
    RecalledMemory,
    Rejection,
    RejectReason,
    RememberResult,
    SpaceInfo,
    SpaceMemory,
    StreamClosed,
    StreamState,
    StreamStatus,
)

_EPISODE_KEYS = frozenset(f.name for f in dataclasses.fields(Episode))
_CUE_KEYS = frozenset(f.name for f in dataclasses.fields(Cue))
_FILTER_KEYS = frozenset(f.name for f in dataclasses.fields(MemoryFilter))


def embedding_list(value: Any) -> List[float]:
    """A list of floats from a sequence or an array-like with ``tolist()``."""
    if value is None:
        return []
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        value = tolist()
    if isinstance(value, (str, bytes)):
        raise TypeError("an embedding must be a sequence of floats, not a string")
    if isinstance(value, list):
        return value
    try:
        return list(value)
    except TypeError:
        raise TypeError(
            f"an embedding must be a sequence of floats or have tolist(), got {type(value).__name__}"
        ) from None


def _packed_floats(value: Any) -> Optional[bytes]:
    """For a numpy-like array: the embedding as the wire bytes of a packed
    ``repeated float`` field 4 (little-endian f32), which protobuf parses
    far faster than it converts a list of 384 Python floats. None for
    anything else (converted through :func:`embedding_list`)."""
    astype = getattr(value, "astype", None)
    if astype is None or not hasattr(value, "dtype"):
        return None
    if getattr(value, "ndim", 1) != 1:
        raise TypeError(f"an embedding must be one-dimensional, got shape {getattr(value, 'shape', '?')}")
    data: bytes = astype("<f4").tobytes()
    return _EMBEDDING_TAG + _varint(len(data)) + data


_EMBEDDING_TAG = bytes([(4 << 3) | 2])  # Episode.embedding, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _timestamp(value: Any) -> Optional[timestamp_pb2.Timestamp]:
    if value is None:
        return None
    if isinstance(value, timestamp_pb2.Timestamp):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(value)
        return ts
    if isinstance(value, (int, float)):
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(value * 1e9))
        return ts
    raise TypeError(f"a time must be a datetime or epoch seconds, got {type(value).__name__}")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def datetime_of(message: Any, name: str) -> Optional[datetime]:
    """The Timestamp field ``name`` as an aware UTC datetime (microseconds)."""
    if not message.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, name)
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def _fields(value: Any, keys: frozenset[str], kind: str) -> Mapping[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        unknown = set(value) - keys
        if unknown:
            raise TypeError(f"unknown {kind} field(s) {sorted(unknown)}; expected some of {sorted(keys)}")
        if "embedding" not in value:
            raise TypeError(f"a {kind} needs an 'embedding'")
        return value
    raise TypeError(f"expected an engram_grpc.{kind} or a dict, got {type(value).__name__}")


def episode_to_proto(value: EpisodeLike, assign_id: bool = False) -> types_pb2.Episode:
    """The wire Episode; with ``assign_id``, an empty id becomes a uuid4."""
    raw: Any = value
    if isinstance(raw, types_pb2.Episode):
        if assign_id and not raw.id:
            copy = types_pb2.Episode()
            copy.CopyFrom(raw)
            copy.id = str(uuid.uuid4())
            return copy
        return raw
    if isinstance(raw, Episode):  # the common case: plain attribute reads
        f: Mapping[str, Any] = raw.__dict__
    else:
        f = _fields(value, _EPISODE_KEYS, "Episode")
    episode_id = f.get("id") or ""
    if assign_id and not episode_id:
        episode_id = str(uuid.uuid4())
    msg = types_pb2.Episode(id=episode_id, what=f.get("what") or "")
    embedding = f.get("embedding")
    packed = _packed_floats(embedding)
    if packed is not None:
        msg.MergeFromString(packed)
    else:
        msg.embedding.extend(embedding_list(embedding))
    tags = f.get("tags")
    if tags:
        msg.tags.extend(tags)
    metadata = f.get("metadata")
    if metadata:
        msg.metadata.update(metadata)
    when = _timestamp(f.get("when"))
    if when is not None:
        msg.when.CopyFrom(when)
    confidence = f.get("encoding_confidence")
    if confidence is not None:
        msg.encoding_confidence = float(confidence)
    expires_at = _timestamp(f.get("expires_at"))
    if expires_at is not None:
        msg.expires_at.CopyFrom(expires_at)
    ttl = ttl_seconds(f.get("ttl_seconds"))
    if ttl is not None:
        msg.ttl_seconds = ttl
    return msg


def ttl_seconds(value: Any) -> Optional[float]:
    """An episode's ``ttl_seconds`` as a float (None: unset). 0 raises
    ValueError: on the wire it would mean unset (the space's default),
    silently. Otherwise checks the type only; the server refuses a value
    out of range (negative, not finite, over 100 years) and one given with
    ``expires_at``, naming the field."""
    seconds = _seconds("ttl_seconds", value)
    if seconds == 0.0:
        raise ValueError(
            "ttl_seconds must be above 0 (None: no expiry of its own, the space's default_ttl_seconds applies)"
        )
    return seconds


def default_ttl_seconds(value: Any) -> Optional[float]:
    """A space's ``default_ttl_seconds`` as a float (None: unset, matching
    any existing space; 0: none). Checks the type only; the server refuses
    a value out of range, naming the field."""
    return _seconds("default_ttl_seconds", value)


def memory_filter(value: MemoryFilterLike) -> MemoryFilter:
    """A :class:`MemoryFilter` from one or from a dict with its keys."""
    raw: Any = value
    if isinstance(raw, MemoryFilter):
        return raw
    if isinstance(raw, Mapping):
        unknown = set(raw) - _FILTER_KEYS
        if unknown:
            raise TypeError(f"unknown MemoryFilter field(s) {sorted(unknown)}; expected some of {sorted(_FILTER_KEYS)}")
        return MemoryFilter(**raw)
    raise TypeError(f"a filter must be an engram_grpc.MemoryFilter or a dict, got {type(raw).__name__}")


def memory_filter_to_proto(value: MemoryFilterLike) -> types_pb2.MemoryFilter:
    """The wire MemoryFilter: a metadata string becomes a condition with one
    value (equals), a sequence one with those values (in). Checks types
    only; the server validates the rest (empty tags, limits)."""
    raw: Any = value
    if isinstance(raw, types_pb2.MemoryFilter):
        return raw
    f = memory_filter(value)
    msg = types_pb2.MemoryFilter(tags_all=f.tags_all, tags_any=f.tags_any, tags_none=f.tags_none)
    for key, values in f.metadata.items():
        msg.metadata.add(key=key, values=[values] if isinstance(values, str) else values)
    return msg


def cue_to_proto(
    value: CueLike,
    filter: Optional[MemoryFilterLike] = None,
    recency_half_life_seconds: Optional[float] = None,
) -> types_pb2.Cue:
    """The wire Cue; ``filter`` and ``recency_half_life_seconds`` (as
    ``recall(..., filter=, recency_half_life_seconds=)`` take them) set those
    fields, which the cue itself must then not have (ValueError)."""
    half_life = half_life_seconds(recency_half_life_seconds)
    raw: Any = value
    if isinstance(raw, types_pb2.Cue):
        if filter is None and half_life is None:
            return raw
        if filter is not None and raw.HasField("filter"):
            raise ValueError(_FILTER_TWICE)
        if half_life is not None and raw.recency_half_life_seconds != 0.0:
            raise ValueError(_HALF_LIFE_TWICE)
        msg = types_pb2.Cue()
        msg.CopyFrom(raw)  # the caller's message stays as it was
        if filter is not None:
            msg.filter.CopyFrom(memory_filter_to_proto(filter))
        if half_life is not None:
            msg.recency_half_life_seconds = half_life
        return msg
    if isinstance(value, Cue) or isinstance(value, Mapping):
        f = _fields(value, _CUE_KEYS, "Cue")
    else:
        f = {"embedding": value}
    msg = types_pb2.Cue(
        max_results=int(f.get("max_results") or 0),
        similarity_threshold=float(f.get("similarity_threshold") or 0.0),
        ef_search=int(f.get("ef_search") or 0),
    )
    msg.embedding.extend(embedding_list(f.get("embedding")))
    for name in ("when_from", "when_to"):
        ts = _timestamp(f.get(name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    cue_filter = f.get("filter")
    if cue_filter is not None and filter is not None:
        raise ValueError(_FILTER_TWICE)
    if filter is None:
        filter = cue_filter
    if filter is not None:
        msg.filter.CopyFrom(memory_filter_to_proto(filter))
    cue_half_life = half_life_seconds(f.get("recency_half_life_seconds"))
    if cue_half_life is not None and half_life is not None:
        raise ValueError(_HALF_LIFE_TWICE)
    if half_life is None:
        half_life = cue_half_life
    if half_life is not None:
        msg.recency_half_life_seconds = half_life
    return msg


_FILTER_TWICE = "the filter is given twice, in the cue and as filter=: give it once"
_HALF_LIFE_TWICE = (
    "the recency half-life is given twice, in the cue and as recency_half_life_seconds=: give it once"
)


def half_life_seconds(value: Any) -> Optional[float]:
    """A recency half-life as a float (None: unset). Checks the type only;
    the server refuses a value out of range (<= 0 other than 0 itself,
    which means unset; not finite; over 100 years), naming the field."""
    return _seconds("recency_half_life_seconds", value)


def _seconds(name: str, value: Any) -> Optional[float]:
    """A number of seconds as a float (None stays None); anything else
    raises TypeError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (for a timedelta, give .total_seconds())" if isinstance(value, timedelta) else ""
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}{hint}")
    return float(value)


def recall_request(
    space: str,
    cue: CueLike,
    include_embeddings: bool,
    batch_size: int = 0,
    filter: Optional[MemoryFilterLike] = None,
    recency_half_life_seconds: Optional[float] = None,
    after: Optional[ConsistencyToken] = None,
) -> types_pb2.RecallRequest:
    request = types_pb2.RecallRequest(
        memory_space_id=space,
        cue=cue_to_proto(cue, filter, recency_half_life_seconds),
        batch_size=batch_size,
        include_embeddings=include_embeddings,
    )
    if after is not None:
        request.after.partition = after.partition
        request.after.sequence = after.sequence
    return request


def recall_result(msg: types_pb2.RecallResponse, recency: bool = False) -> RecallResult:
    """The recall's answer; ``recency``: whether the cue asked for recency
    weighting (see :func:`_recalled`)."""
    return RecallResult(
        memories=tuple(_recalled(m, recency) for m in msg.memories),
        snapshot_sequence=msg.snapshot_sequence,
        more=msg.more,
    )


def _recalled(m: types_pb2.RecalledMemory, recency: bool = False) -> RecalledMemory:
    e = m.episode
    score, weight = m.score, m.recency_weight
    if not recency and weight == 0.0:
        # A server from before recency weighting sends neither field (a
        # current one sends weight 1 without recency): ranked by similarity.
        score, weight = m.similarity, 1.0
    return RecalledMemory(
        episode=RecalledEpisode(
            id=e.id,
            what=e.what,
            embedding=tuple(e.embedding),
            when=datetime_of(e, "when"),
            encoding_confidence=e.encoding_confidence if e.HasField("encoding_confidence") else None,
            tags=tuple(e.tags),
            metadata=dict(e.metadata),
            expires_at=datetime_of(e, "expires_at"),
        ),
        similarity=m.similarity,
        confidence=m.confidence,
        server_sequence=m.server_sequence,
        indexed=m.indexed,
        score=score,
        recency_weight=weight,
    )


#: The vector storages by name, as ``create_space`` takes them and
#: ``SpaceInfo.vector_storage`` gives them.
VECTOR_STORAGES: Dict[str, memory_pb2.VectorStorage] = {
    "memory": memory_pb2.VECTOR_STORAGE_MEMORY,
    "compact": memory_pb2.VECTOR_STORAGE_COMPACT,
}


def vector_storage_to_proto(value: Optional[str]) -> memory_pb2.VectorStorage:
    """The wire value of a storage name; ``None``: unspecified (the server's
    default). Raises ValueError for another name, TypeError for a non-string."""
    if value is None:
        return memory_pb2.VECTOR_STORAGE_UNSPECIFIED
    if not isinstance(value, str):
        raise TypeError(f"vector_storage must be a string ('memory' or 'compact') or None, not {type(value).__name__}")
    try:
        return VECTOR_STORAGES[value]
    except KeyError:
        raise ValueError(f"invalid vector_storage: is {value!r}; expected 'memory' or 'compact'") from None


def vector_storage_name(value: int) -> str:
    """The name of a wire storage value; one this client does not know
    (from a newer server) reads as its number."""
    for name, number in VECTOR_STORAGES.items():
        if number == value:
            return name
    return str(value)


def space_info(msg: memory_pb2.SpaceInfo) -> SpaceInfo:
    return SpaceInfo(
        memory_space_id=msg.memory_space_id,
        dimension=msg.dimension,
        count=msg.count,
        indexed_count=msg.indexed_count,
        queue_depth=msg.queue_depth,
        last_sequence=msg.last_sequence,
        index_lag_seconds=msg.index_lag_seconds,
        quarantined_count=msg.quarantined_count,
        memory=SpaceMemory(
            vectors=msg.memory.vectors,
            codes=msg.memory.codes,
            graph=msg.memory.graph,
            episodes=msg.memory.episodes,
            fresh=msg.memory.fresh,
            vectors_on_disk=msg.memory.vectors_on_disk,
        ),
        vector_storage=vector_storage_name(msg.vector_storage),
        default_ttl_seconds=msg.default_ttl_seconds,
        expired_count=msg.expired_count,
    )


def remember_result(msg: memory_pb2.RememberResponse) -> RememberResult:
    return RememberResult(
        memory_id=msg.memory_id,
        server_sequence=msg.server_sequence,
        committed_at=datetime_of(msg, "committed_at"),
        duplicate=msg.duplicate,
        token=token_of(msg),
    )


def stream_status(msg: streaming_pb2.StreamStatus) -> StreamStatus:
    return StreamStatus(
        state=StreamState.from_wire(msg.state),
        queue_depth=msg.queue_depth,
        queue_capacity=msg.queue_capacity,
        pressure=msg.pressure,
        suggested_rate=msg.suggested_rate,
        message=msg.message,
    )


def stream_closed(msg: streaming_pb2.StreamClosed) -> StreamClosed:
    return StreamClosed(final_sequence=msg.final_sequence, accepted=msg.accepted, rejected=msg.rejected)


def ack(msg: streaming_pb2.ObservationAck, sequence_number: int, retries: int) -> Ack:
    return Ack(
        sequence_number=sequence_number,
        memory_id=msg.memory_id,
        server_sequence=msg.server_sequence,
        committed_at=datetime_of(msg, "committed_at"),
        duplicate=msg.duplicate,
        replayed=msg.replayed,
        wire_sequence=msg.sequence_number,
        retries=retries,
        token=token_of(msg),
    )


def token_of(
    msg: Union[streaming_pb2.ObservationAck, memory_pb2.RememberResponse],
) -> Optional[ConsistencyToken]:
    """The ack's consistency token (cluster mode), else None."""
    if not msg.HasField("token"):
        return None
    return ConsistencyToken(partition=msg.token.partition, sequence=msg.token.sequence)


def rejection(
    sequence_number: int,
    reason: RejectReason,
    message: str,
    retry_after_ms: int,
    retries: int,
    episode_id: str,
) -> Rejection:
    return Rejection(
        sequence_number=sequence_number,
        reason=reason,
        message=message,
        retry_after=retry_after_ms / 1000.0 if retry_after_ms > 0 else None,
        retries=retries,
        episode_id=episode_id,
    )
