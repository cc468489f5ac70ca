"""What an observe session reports while it runs (see
``ClientOptions.on_event`` and ``StreamingClient.session_stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .types import StreamStatus


@dataclass(frozen=True)
class StatusReceived:
    """The server sent a flow-control status; ``pacing_rate`` is the rate
    (observations/s) the session now keeps to, None when unpaced."""

    space: str
    status: StreamStatus
    pacing_rate: Optional[float]
    at: float


@dataclass(frozen=True)
class Retrying:
    """An observation was rejected as overloaded and will be resent after
    ``after`` seconds (its ``retry``-th resend)."""

    space: str
    sequence_number: int
    retry: int
    after: float
    at: float


@dataclass(frozen=True)
class Disconnected:
    """The stream broke; reconnect attempt ``attempt`` follows in ``retry_in`` s."""

    space: str
    error: str
    attempt: int
    retry_in: float
    at: float


@dataclass(frozen=True)
class Reconnected:
    """A new stream is up: ``resumed`` when the old session continued (and
    ``resent`` observations went out again under their numbers), else a new
    session replaced one the server lost."""

    space: str
    session_id: str
    resumed: bool
    resent: int
    at: float


SessionEvent = Union[StatusReceived, Retrying, Disconnected, Reconnected]


@dataclass
class SessionStats:
    """Counters of one observe session, kept up to date by the session
    (see ``StreamingClient.session_stats``)."""

    space: str
    session_id: str = ""
    connected: bool = False
    #: Streams opened again after a break (resumed or replaced).
    reconnects: int = 0
    #: Sessions the server had lost and the client replaced.
    sessions_replaced: int = 0
    #: Overload resends.
    retries: int = 0
    #: Observations sent on the wire (resends included).
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    pacing_rate: Optional[float] = None
    last_status: Optional[StreamStatus] = None
