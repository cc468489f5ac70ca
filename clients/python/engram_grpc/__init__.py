"""engram_grpc: the Python client of the engram streaming memory server.

:class:`StreamingClient` (asyncio) streams observations with per-observation
acks, flow control, overload retries and reconnect/resume, recalls by cue
and wraps the unary calls; :class:`Client` is its blocking counterpart.
See the package README for the semantics.
"""

from .client import DEFAULT_SPACE, DEFAULT_TARGET, StreamingClient
from .errors import (
    AlreadyExists,
    EngramError,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    Rejected,
    RpcError,
    SessionClosed,
    Unauthenticated,
    Unavailable,
)
from .events import Disconnected, Reconnected, Retrying, SessionEvent, SessionStats, StatusReceived
from .options import BackoffPolicy, ClientOptions, RetryPolicy
from .sync import Client
from .types import (
    Ack,
    ConsistencyToken,
    Answer,
    Cue,
    CueLike,
    Episode,
    EpisodeLike,
    MemoryFilter,
    MemoryFilterLike,
    Priority,
    RecalledEpisode,
    RecalledMemory,
    RecallResult,
    Rejection,
    RejectReason,
    RememberResult,
    SpaceInfo,
    SpaceMemory,
    StreamClosed,
    StreamState,
    StreamStatus,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SPACE",
    "DEFAULT_TARGET",
    "Ack",
    "AlreadyExists",
    "Answer",
    "BackoffPolicy",
    "Client",
    "ClientOptions",
    "ConsistencyToken",
    "Cue",
    "CueLike",
    "Disconnected",
    "EngramError",
    "Episode",
    "EpisodeLike",
    "InvalidArgument",
    "MemoryFilter",
    "MemoryFilterLike",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Priority",
    "ProtocolError",
    "RecallResult",
    "RecalledEpisode",
    "RecalledMemory",
    "Reconnected",
    "Rejected",
    "RejectReason",
    "Rejection",
    "RememberResult",
    "RetryPolicy",
    "Retrying",
    "RpcError",
    "SessionClosed",
    "SessionEvent",
    "SessionStats",
    "SpaceInfo",
    "SpaceMemory",
    "StatusReceived",
    "StreamClosed",
    "StreamState",
    "StreamStatus",
    "StreamingClient",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
