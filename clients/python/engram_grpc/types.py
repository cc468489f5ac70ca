"""The values the client takes and gives: episodes, cues, acks, recall
results, space info. Plain dataclasses; the gRPC messages stay inside.

Inputs (:class:`Episode`, :class:`Cue`, :class:`MemoryFilter`) may also be
given as plain dicts with the same keys; embeddings may be lists or tuples of floats, numpy arrays, or
anything else with a ``tolist()`` method.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

#: An embedding: a sequence of floats, or an array-like with ``tolist()``
#: (numpy, torch on CPU, array.array, ...).
Embedding = Any


class Priority(enum.IntEnum):
    """Order of indexing; the last 10% of the queue is kept for HIGH."""

    NORMAL = 0
    HIGH = 1
    LOW = 2


class RejectReason(enum.IntEnum):
    """Why the server (or the client, for ``CLOSED``) rejected an observation.

    ``UNAUTHORIZED``: the stream's API key lacks write on its space; the
    stream goes on, and the client does not resend it (the same key would be
    refused again)."""

    UNSPECIFIED = 0
    OVERLOADED = 1
    INVALID = 2
    OUT_OF_ORDER = 3
    UNAUTHORIZED = 4
    CLOSED = 5
    UNAVAILABLE = 6

    @classmethod
    def from_wire(cls, value: int) -> "RejectReason":
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED

    @property
    def retryable(self) -> bool:
        """Overload and unavailability pass; the client resends these."""
        return self in (RejectReason.OVERLOADED, RejectReason.UNAVAILABLE)


class StreamState(enum.IntEnum):
    """The server's flow-control state of an observe stream."""

    UNSPECIFIED = 0
    ACTIVE = 1
    PAUSED = 2
    BACKPRESSURE = 3
    OVERLOADED = 4
    CLOSING = 5

    @classmethod
    def from_wire(cls, value: int) -> "StreamState":
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass
class Episode:
    """Something that happened, with its embedding.

    ``id``: up to 128 bytes; left empty, the streaming client assigns a
    uuid4 before the first send (so a resend after a lost session is
    deduplicated by the server). ``when``: unset means the receive time
    (a naive datetime is taken as UTC).

    Expiry (optional, at most one of the two): ``expires_at``, the instant
    from which the memory is never recalled or listed (a naive datetime is
    taken as UTC; it must be in the future by the server's clock), or
    ``ttl_seconds``, that many seconds after the server accepts it (> 0, at
    most 100 years). Neither: the space's ``default_ttl_seconds``, if it
    has one, else never. The server refuses both at once, a past
    ``expires_at`` and a ``ttl_seconds`` out of range, naming the field
    (:class:`~engram_grpc.InvalidArgument` from ``remember``, a
    ``RejectReason.INVALID`` rejection on a stream); ``ttl_seconds=0``,
    which the wire cannot carry (there 0 means unset), raises
    ``ValueError`` before anything is sent, and a non-number ``TypeError``.
    """

    embedding: Embedding
    what: str = ""
    id: str = ""
    when: Optional[datetime] = None
    encoding_confidence: Optional[float] = None
    tags: Sequence[str] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_at: Optional[datetime] = None
    ttl_seconds: Optional[float] = None


@dataclass(frozen=True)
class MemoryFilter:
    """Which memories a recall considers, by their tags and metadata; every
    condition given must hold (an empty filter matches every memory).

    ``tags_all``: the memory has every one of these tags; ``tags_any``: it
    has at least one of them (ignored when empty); ``tags_none``: it has none
    of them. ``metadata``: for each key, a string means ``metadata[key]``
    equals it, a sequence of strings means it is one of them (a memory
    without the key does not match).

    The server applies the filter inside its search, not to the top results
    after it: a recall returns ``min(max_results, matching memories)``, the
    ones not yet indexed included, however far from the cue they are. It
    refuses (:class:`~engram_grpc.InvalidArgument`, naming the field, e.g.
    ``cue.filter.tags_all``) an empty tag or key, a key with no values, an
    oversized tag, key or value, and more than 256 terms in all.

    The sequences are stored as tuples and ``metadata`` as a copy; a string
    where a sequence of strings belongs (``tags_all="x"``), or anything
    other than strings, raises ``TypeError``.
    """

    tags_all: Sequence[str] = ()
    tags_any: Sequence[str] = ()
    tags_none: Sequence[str] = ()
    metadata: Mapping[str, Union[str, Sequence[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tags_all", "tags_any", "tags_none"):
            object.__setattr__(self, name, _strings(f"MemoryFilter.{name}", getattr(self, name)))
        raw: Any = self.metadata
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise TypeError(
                f"MemoryFilter.metadata must be a mapping of str to str or a sequence of str, got {type(raw).__name__}"
            )
        metadata: Dict[str, Union[str, Tuple[str, ...]]] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise TypeError(f"MemoryFilter.metadata keys must be strings, got {type(key).__name__}")
            metadata[key] = value if isinstance(value, str) else _strings(f"MemoryFilter.metadata[{key!r}]", value)
        object.__setattr__(self, "metadata", metadata)

    def __hash__(self) -> int:
        values = {k: v if isinstance(v, str) else tuple(v) for k, v in self.metadata.items()}
        return hash((tuple(self.tags_all), tuple(self.tags_any), tuple(self.tags_none), frozenset(values.items())))


def _strings(what: str, value: Any) -> Tuple[str, ...]:
    """``value`` (a sequence of strings; None: empty) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of strings, got {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must hold strings, got {type(item).__name__}")
    return items


#: What the client accepts where a filter is expected: a MemoryFilter or a
#: dict with its keys.
MemoryFilterLike = Union[MemoryFilter, Mapping[str, Any]]


@dataclass
class Cue:
    """What to recall by. ``max_results``: 1-1000, 0 means the server's
    default (10); ``similarity_threshold``: minimum cosine similarity;
    ``when_from`` / ``when_to``: an inclusive window on ``Episode.when``;
    ``ef_search``: the index's search breadth for this recall, 1-4096, 0
    means the server's ``engine.index.ef_search`` (higher: better recall,
    slower; large spaces need more for the same recall); ``filter``: which
    memories are candidates, by tags and metadata (see :class:`MemoryFilter`;
    ``recall(..., filter=)`` sets the same).

    ``recency_half_life_seconds``: rank by recency too, so that a newer fact
    outranks an older, similar one: each memory's score is ``similarity x
    0.5^(age / half-life)``, its age being the recall's time minus its
    ``Episode.when`` (a memory with similarity <= 0 keeps its similarity).
    ``None`` (or 0): by similarity alone. The server refuses
    (:class:`~engram_grpc.InvalidArgument` naming
    ``cue.recency_half_life_seconds``) a negative, infinite or NaN half-life
    and one over 100 years. ``recall(..., recency_half_life_seconds=)`` sets
    the same."""

    embedding: Embedding
    max_results: int = 0
    similarity_threshold: float = 0.0
    when_from: Optional[datetime] = None
    when_to: Optional[datetime] = None
    ef_search: int = 0
    filter: Optional[MemoryFilterLike] = None
    recency_half_life_seconds: Optional[float] = None


#: What the client accepts where an episode is expected.
EpisodeLike = Union[Episode, Mapping[str, Any]]
#: What the client accepts where a cue is expected: a Cue, a dict with its
#: keys, or a bare embedding.
CueLike = Union[Cue, Mapping[str, Any], Embedding]


@dataclass(frozen=True)
class ConsistencyToken:
    """Cluster mode: where a write is stored (its partition's log and the
    sequence there). A recall given it as ``after``, on any node, sees that
    write. Acks carry none on a single node (which has applied everything
    it acked)."""

    partition: int
    sequence: int


@dataclass(frozen=True)
class Ack:
    """An accepted observation: durable, and visible to every recall that
    starts from now on."""

    #: The client's number for it: 1 for the session's first observation, +1 each.
    sequence_number: int
    #: The episode's id (the caller's, or the client-made uuid4).
    memory_id: str
    #: Commit order in the space (from 1).
    server_sequence: int
    committed_at: Optional[datetime]
    #: The server already had an episode with this id and stored nothing new.
    duplicate: bool = False
    #: The server replayed its original answer after a resume.
    replayed: bool = False
    #: The number the accepted attempt carried on the wire (differs from
    #: ``sequence_number`` after an overload resend or a replaced session).
    wire_sequence: int = 0
    #: How many times the client resent it after overload rejections.
    retries: int = 0
    #: Cluster mode: where it is stored (pass it as a recall's ``after``).
    token: Optional[ConsistencyToken] = None

    @property
    def accepted(self) -> bool:
        return True


@dataclass(frozen=True)
class Rejection:
    """A rejected observation (not stored)."""

    sequence_number: int
    reason: RejectReason
    message: str
    #: Seconds the server asked to wait (overload), if it said.
    retry_after: Optional[float]
    retries: int
    #: The episode's id as sent (client-made uuid4 when the caller gave none).
    episode_id: str

    @property
    def accepted(self) -> bool:
        return False


#: One answer of ``observe_many``: check ``.accepted``.
Answer = Union[Ack, Rejection]


@dataclass(frozen=True)
class RecalledEpisode:
    """An episode as the server returns it (``embedding`` is empty unless
    the recall asked for embeddings; then it is L2-normalised).
    ``expires_at``: when the memory expires (from the episode's
    ``expires_at`` or ``ttl_seconds``, or the space's
    ``default_ttl_seconds``), None if never."""

    id: str
    what: str
    embedding: Tuple[float, ...]
    when: Optional[datetime]
    encoding_confidence: Optional[float]
    tags: Tuple[str, ...]
    metadata: Dict[str, str]
    expires_at: Optional[datetime] = None


@dataclass(frozen=True)
class RecalledMemory:
    """One recalled memory; a recall's memories come best ``score`` first."""

    episode: RecalledEpisode
    #: Cosine similarity to the cue.
    similarity: float
    confidence: float
    server_sequence: int
    #: True: found in the HNSW index; False: in the not-yet-indexed tier.
    indexed: bool
    #: What the recall ranked by: ``similarity x recency_weight`` with
    #: ``Cue.recency_half_life_seconds`` (``similarity`` itself for a memory
    #: with similarity <= 0), else ``similarity``.
    score: float
    #: ``0.5^(age / half-life)`` with ``Cue.recency_half_life_seconds``
    #: (at most 1, which a memory dated in the future gets), else 1.
    recency_weight: float

    @property
    def memory_id(self) -> str:
        return self.episode.id


@dataclass(frozen=True)
class RecallResult:
    """One recall, or one batch of a streamed recall (``more`` is False on
    the last). Every batch of one recall has the same ``snapshot_sequence``:
    the highest server sequence the recall can see."""

    memories: Tuple[RecalledMemory, ...]
    snapshot_sequence: int
    more: bool = False


@dataclass(frozen=True)
class SpaceMemory:
    """Memory the server holds for a space, by kind, in bytes (its estimates
    of what the structures hold; the process's resident memory is the
    measured total)."""

    #: Exact float32 vectors of indexed memories (kept once, in the index).
    vectors: int = 0
    #: The index's quantized code rows (what searches traverse).
    codes: int = 0
    #: The index's link lists, labels, locks and label table.
    graph: int = 0
    #: Stored episodes besides their vectors: ids, texts, tags, metadata.
    episodes: int = 0
    #: Vectors of memories not indexed yet.
    fresh: int = 0
    #: Exact float32 vectors of indexed memories kept on the server's disk
    #: instead of in ``vectors`` (compact spaces; 0 for memory spaces). Disk,
    #: not RAM: not part of :attr:`total`.
    vectors_on_disk: int = 0

    @property
    def total(self) -> int:
        """Every kind held in RAM together (``vectors_on_disk`` is not)."""
        return self.vectors + self.codes + self.graph + self.episodes + self.fresh


@dataclass(frozen=True)
class SpaceInfo:
    memory_space_id: str
    dimension: int
    count: int
    indexed_count: int
    queue_depth: int
    last_sequence: int
    index_lag_seconds: float
    #: Observations whose indexing kept panicking on the server: kept in its
    #: exact-scanned fresh tier (durable, recalled), not in ``queue_depth``.
    quarantined_count: int = 0
    #: Memory held for the space, by kind.
    memory: SpaceMemory = SpaceMemory()
    #: Where the exact vectors of its indexed memories are kept: ``"memory"``
    #: (in RAM) or ``"compact"`` (in a file on the server's disk, RAM holding
    #: 8-bit codes). Chosen at creation (see :meth:`StreamingClient.create_space`).
    vector_storage: str = "memory"
    #: Time to live, in seconds, of memories observed without an expiry of
    #: their own (0: none). Chosen at creation.
    default_ttl_seconds: float = 0.0
    #: Memories the server purged because they expired, since it started.
    expired_count: int = 0


@dataclass(frozen=True)
class RememberResult:
    memory_id: str
    server_sequence: int
    committed_at: Optional[datetime]
    duplicate: bool
    #: Cluster mode: where it is stored (pass it as a recall's ``after``).
    token: Optional[ConsistencyToken] = None


@dataclass(frozen=True)
class StreamStatus:
    """A flow-control message from the server."""

    state: StreamState
    queue_depth: int
    queue_capacity: int
    pressure: float
    #: Observations/s this stream should send (with BACKPRESSURE).
    suggested_rate: float
    message: str


@dataclass(frozen=True)
class StreamClosed:
    """The server's summary when a session closes."""

    final_sequence: int
    accepted: int
    rejected: int
