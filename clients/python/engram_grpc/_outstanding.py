"""Bookkeeping of one observe session's unanswered observations.

Two numberings meet here. The *caller* number is given at submit time: 1, 2,
3, ... per session object, never reused. The *wire* number is what the
server sees: per server session, from 1, +1 per observation sent. They
differ once an overloaded observation is resent (under a new wire number)
or a lost session is replaced (wire numbers restart at 1). Pure logic, no
I/O: the session task drives it (a port of the Rust client's
``outstanding.rs``).
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

from . import _convert
from ._proto.engram.v1 import streaming_pb2, types_pb2
from .errors import EngramError, ProtocolError
from .options import RetryPolicy
from .types import Answer, RejectReason

_ACCEPTED = streaming_pb2.ObservationAck.ACK_ACCEPTED
_REJECTED = streaming_pb2.ObservationAck.ACK_REJECTED


class Entry:
    """One observation from submit until its answer."""

    __slots__ = ("seq", "episode", "priority", "retries", "send_at", "future")

    def __init__(self, seq: int, episode: types_pb2.Episode, priority: int, future: "asyncio.Future[Answer]") -> None:
        self.seq = seq
        self.episode = episode
        #: A wire enum value (protobuf's stubs type enums as a NewType of int).
        self.priority: Any = priority
        self.retries = 0
        self.send_at = 0.0
        self.future = future

    def observation(self, wire: int) -> streaming_pb2.ObserveRequest:
        return streaming_pb2.ObserveRequest(
            observation=streaming_pb2.Observation(sequence_number=wire, episode=self.episode, priority=self.priority)
        )


class Retry:
    """An ack outcome: overloaded, resend after ``delay`` seconds."""

    __slots__ = ("sequence_number", "retry", "delay")

    def __init__(self, sequence_number: int, retry: int, delay: float) -> None:
        self.sequence_number = sequence_number
        self.retry = retry
        self.delay = delay


class Outstanding:
    """The unanswered observations of one session (bounded by the session's
    in-flight permits, not by this type)."""

    def __init__(self, retry: RetryPolicy, on_resolved: Callable[[], None]) -> None:
        """``on_resolved`` is called once per entry whose future gets its
        final answer or error (the session frees an in-flight slot)."""
        self._retry = retry
        self._on_resolved = on_resolved
        #: (wire, entry) sent in this server session and not yet answered,
        #: in wire order: acks must come in exactly this order.
        self._on_wire: Deque[Tuple[int, Entry]] = deque()
        #: Entries to (re)send, by caller number; sent in caller order.
        self._waiting: List[Tuple[int, Entry]] = []
        self._next_wire = 1

    def __len__(self) -> int:
        return len(self._on_wire) + len(self._waiting)

    @property
    def highest_sent(self) -> int:
        """The highest wire number sent in this server session (0 before the first)."""
        return self._next_wire - 1

    def push(self, entry: Entry, now: float) -> None:
        entry.send_at = now
        heapq.heappush(self._waiting, (entry.seq, entry))

    def next_send_at(self) -> Optional[float]:
        """When the next waiting observation may go, if one is waiting."""
        return self._waiting[0][1].send_at if self._waiting else None

    def take_next(self) -> streaming_pb2.ObserveRequest:
        """Numbers the next waiting observation for the wire (whatever its
        time: the caller checked :meth:`next_send_at`)."""
        _, entry = heapq.heappop(self._waiting)
        wire = self._next_wire
        self._next_wire += 1
        self._on_wire.append((wire, entry))
        return entry.observation(wire)

    def on_ack(self, ack: streaming_pb2.ObservationAck, now: float) -> Union[Answer, Retry]:
        """Applies the server's ack: the final answer (its future resolved),
        or a :class:`Retry`. An ack that does not answer the oldest
        observation on the wire, or an out-of-order rejection, means the two
        sides disagree on numbering: :class:`ProtocolError`."""
        if not self._on_wire:
            raise ProtocolError(f"ack for sequence {ack.sequence_number} but no observation is waiting for one")
        wire, entry = self._on_wire[0]
        if ack.sequence_number != wire:
            raise ProtocolError(
                f"ack for sequence {ack.sequence_number} but the oldest unanswered observation is {wire}"
            )
        if ack.status not in (_ACCEPTED, _REJECTED):
            raise ProtocolError(f"ack for sequence {wire} has no status (expected ACCEPTED or REJECTED)")
        reason = RejectReason.from_wire(ack.reason)
        if ack.status == _REJECTED and reason == RejectReason.OUT_OF_ORDER:
            raise ProtocolError(f"the server rejected sequence {wire} as out of order: {ack.message}")
        self._on_wire.popleft()
        answer: Answer
        if ack.status == _ACCEPTED:
            answer = _convert.ack(ack, entry.seq, entry.retries)
        elif reason.retryable and entry.retries < self._retry.max_retries:
            entry.retries += 1
            delay = self._retry.delay(ack.retry_after_ms)
            self.push(entry, now + delay)
            return Retry(entry.seq, entry.retries, delay)
        else:
            answer = _convert.rejection(
                entry.seq, reason, ack.message, ack.retry_after_ms, entry.retries, entry.episode.id
            )
        self._resolve(entry, answer)
        return answer

    def resume(self, last_acked: int) -> List[streaming_pb2.ObserveRequest]:
        """The session was resumed and the server's last answer was
        ``last_acked``: every observation on the wire without an answer, to
        be resent under the same numbers, in order (the server replays the
        answers it had given). Raises ValueError when the server's position
        cannot be reconciled with ours; the caller then opens a new session."""
        highest = self.highest_sent
        if last_acked > highest:
            raise ValueError(
                f"the server answered up to sequence {last_acked} but this client sent only up to {highest}"
            )
        first_unanswered = self._on_wire[0][0] if self._on_wire else self._next_wire
        if last_acked + 1 < first_unanswered:
            raise ValueError(
                f"the server's last answer is sequence {last_acked}, "
                f"but this client already has answers up to {first_unanswered - 1}"
            )
        return [entry.observation(wire) for wire, entry in self._on_wire]

    def restart_session(self, now: float) -> None:
        """The server session is gone: everything on the wire waits to be
        sent again, numbered from 1 in the new session."""
        while self._on_wire:
            _, entry = self._on_wire.popleft()
            self.push(entry, now)
        self._next_wire = 1

    def reject_waiting(self, message: str) -> None:
        """Answers every observation not yet sent (or waiting for a retry)
        with a local CLOSED rejection."""
        waiting, self._waiting = self._waiting, []
        for _, entry in waiting:
            self._resolve(
                entry,
                _convert.rejection(entry.seq, RejectReason.CLOSED, message, 0, entry.retries, entry.episode.id),
            )

    def fail_all(self, error: EngramError) -> None:
        """Ends every unanswered observation with ``error``."""
        entries = [e for _, e in self._on_wire] + [e for _, e in self._waiting]
        self._on_wire.clear()
        self._waiting = []
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(error)
                # Marks it retrieved: nobody may be waiting for this one.
                entry.future.exception()
            self._on_resolved()

    def _resolve(self, entry: Entry, answer: Answer) -> None:
        if not entry.future.done():  # a caller may have cancelled it
            entry.future.set_result(answer)
        self._on_resolved()
