"""Client configuration: one dataclass for the client, one per policy."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from .events import SessionEvent


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff between reconnect attempts, with jitter so that
    many clients cut off by one server restart do not come back in lockstep.

    Attempt ``n`` (from 0) waits ``min(max, initial * multiplier**n)`` scaled
    by a random factor in [0.5, 1]. After ``max_attempts`` failed attempts in
    a row the session fails with :class:`~engram_grpc.Unavailable`; a
    successful reconnect starts the count again. The defaults (0.1 s
    doubling to 5 s, 15 attempts) ride out a server restart of about a
    minute.
    """

    initial: float = 0.1
    max: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 15

    def delay(self, attempt: int, unit: Optional[float] = None) -> float:
        """Seconds to wait before attempt ``attempt`` (from 0); ``unit`` is
        the jitter in [0, 1) (random when None)."""
        grown = self.initial * max(self.multiplier, 1.0) ** min(attempt, 64)
        base = min(grown, self.max)
        u = random.random() if unit is None else min(max(unit, 0.0), 1.0)
        return base * (0.5 + 0.5 * u)


@dataclass(frozen=True)
class RetryPolicy:
    """Resending observations rejected with ``REJECT_OVERLOADED`` (or
    ``REJECT_UNAVAILABLE``).

    The client waits the server's ``retry_after_ms`` (``default_delay`` when
    it gave none), clamped to ``max_delay``, then resends the observation
    under a new sequence number; meanwhile it sends nothing else, since the
    server would reject that too. After ``max_retries`` resends of one
    observation its last rejection goes to the caller; ``max_retries=0``
    hands every overload rejection to the caller.
    """

    max_retries: int = 20
    default_delay: float = 0.1
    max_delay: float = 10.0

    def delay(self, retry_after_ms: int) -> float:
        hinted = self.default_delay if retry_after_ms == 0 else retry_after_ms / 1000.0
        return min(hinted, self.max_delay)


@dataclass(frozen=True)
class ClientOptions:
    """Settings of a :class:`~engram_grpc.StreamingClient`."""

    #: Per observe session: observations sent but not yet answered. Sends
    #: wait while this many are outstanding (backpressure to the caller).
    max_in_flight: int = 1024
    #: Reconnecting a broken observe stream (also sets gRPC's own
    #: reconnect backoff of the channel).
    reconnect: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: Resending observations the server rejected as overloaded.
    overload_retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Seconds of silence after which a stream tells the server it is alive
    #: (a third of the server's default idle timeout of 60 s).
    heartbeat_interval: float = 20.0
    #: Seconds to wait for the server's init_ack when opening a stream.
    connect_timeout: float = 5.0
    #: HTTP/2 keepalive ping interval and timeout, in seconds (None: off).
    keepalive_interval: Optional[float] = 10.0
    keepalive_timeout: float = 10.0
    #: Give every streamed episode without an id a uuid4 before its first
    #: send, so a resend after a lost session cannot store it twice.
    assign_episode_ids: bool = True
    #: Ask the server for flow-control statuses (SLOW_DOWN etc.).
    enable_backpressure: bool = True
    #: Memories per batch of ``recall_stream`` (0: all in one batch).
    recall_batch_size: int = 0
    #: Deadline in seconds for unary calls (None: none).
    unary_timeout: Optional[float] = 30.0
    #: Called (on the event loop) with every session event: statuses,
    #: overload retries, disconnects, reconnects. Must not block.
    on_event: Optional[Callable[[SessionEvent], None]] = None
    #: The API key, sent as ``authorization: Bearer <key>`` metadata on
    #: every call (unary, streamed, and every reconnect of a stream); None
    #: or "" sends none. Never shown in ``repr`` and never logged.
    api_key: Optional[str] = field(default=None, repr=False)
    #: Speak TLS to the server (also implied by an ``https://`` or
    #: ``grpcs://`` target).
    tls: bool = False
    #: PEM of the CA certificate(s) to trust for TLS (e.g. ``ca.pem`` from
    #: ``engram tls generate``); None: the system's roots.
    root_certificates: Optional[bytes] = field(default=None, repr=False)
    #: The name the server's certificate must carry, instead of the target's
    #: host (gRPC's ``grpc.ssl_target_name_override``); None: the host.
    tls_server_name: Optional[str] = None

    def __post_init__(self) -> None:
        key = self.api_key
        if key is not None:
            if not isinstance(key, str):
                raise TypeError(f"api_key must be a str, not {type(key).__name__}")
            # A gRPC metadata value is visible ASCII; the message never quotes the key.
            if any(not ("\x21" <= c <= "\x7e") for c in key):
                raise ValueError("api_key must be printable ASCII without spaces (as engram keys generate makes them)")
        if self.root_certificates is not None and not isinstance(self.root_certificates, bytes):
            raise TypeError(
                "root_certificates must be the PEM as bytes (open(path, 'rb').read()), "
                f"not {type(self.root_certificates).__name__}"
            )
