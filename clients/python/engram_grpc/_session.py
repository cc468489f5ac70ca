"""One observe session: opens the gRPC stream, writes observations (paced
under SLOW_DOWN, held after an overload), matches acks, retries overloaded
observations, heartbeats, and on a broken stream reconnects with backoff
and resumes the session (or opens a new one when the server lost it).

Everything here runs on one event loop; there are no locks. Writes are
synchronous (into the current stream's request queue), so a submit, an ack
or a timer can send at once; the only long-running coroutine is
:meth:`ObserveSession._run`, which reads the stream and reconnects it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import AsyncIterator, Deque, Optional

import grpc
import grpc.aio

from . import _convert
from ._connection import EOF, Connection
from ._outstanding import Entry, Outstanding, Retry
from ._pacer import Pacer
from ._proto.engram.v1 import streaming_pb2, types_pb2
from .errors import EngramError, ProtocolError, RpcError, SessionClosed, Unavailable, from_rpc_error, is_transient
from .events import Disconnected, Reconnected, Retrying, SessionEvent, SessionStats, StatusReceived
from .options import ClientOptions
from .types import Answer, StreamClosed, StreamState

log = logging.getLogger("engram_grpc")

_BUFFER_STATUS = streaming_pb2.FlowControl.ACTION_BUFFER_STATUS
_PACED_STATES = (StreamState.BACKPRESSURE, StreamState.OVERLOADED)
# The end of a stream's request queue.
_END = None


class _Broken(Exception):
    """The stream broke; reconnect and resume."""

    def __init__(self, error: EngramError) -> None:
        super().__init__(str(error))
        self.error = error


class _Stream:
    """One gRPC ObserveStream call whose init the server acknowledged."""

    def __init__(
        self,
        call: "grpc.aio.StreamStreamCall[streaming_pb2.ObserveRequest, streaming_pb2.ObserveResponse]",
        queue: "asyncio.Queue[Optional[streaming_pb2.ObserveRequest]]",
        ack: streaming_pb2.StreamInitAck,
    ) -> None:
        self.call = call
        self.queue = queue
        self.ack = ack

    def end(self) -> None:
        self.queue.put_nowait(_END)
        self.call.cancel()


async def _requests(
    queue: "asyncio.Queue[Optional[streaming_pb2.ObserveRequest]]",
) -> AsyncIterator[streaming_pb2.ObserveRequest]:
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


class ObserveSession:
    """The observe session of one space. Create with :meth:`open`."""

    def __init__(self, conn: Connection, space: str, options: ClientOptions) -> None:
        self._conn = conn
        self._space = space
        self._options = options
        self._loop = asyncio.get_running_loop()
        self._out = Outstanding(options.overload_retry, self._release)
        #: Free in-flight slots, and the submitters waiting for one.
        self._free = max(1, options.max_in_flight)
        self._slot_waiters: Deque["asyncio.Future[None]"] = deque()
        self._next_seq = 1
        self._pacer = Pacer()
        #: After an overload rejection nothing is sent before this.
        self._hold_until: Optional[float] = None
        self._stream: Optional[_Stream] = None
        self._session_id = ""
        self._task: Optional["asyncio.Task[None]"] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._heartbeat: Optional[asyncio.TimerHandle] = None
        self._last_write = self._loop.time()
        #: Set once the session can take no more observations, with why.
        self._ended: Optional[EngramError] = None
        self._closing = False
        self._close_drain = True
        self._close_sent = False
        self._done: "asyncio.Future[Optional[StreamClosed]]" = self._loop.create_future()
        self.stats = SessionStats(space=space)

    # ----- public (to the client) -----

    @classmethod
    async def open(cls, conn: Connection, space: str, options: ClientOptions) -> "ObserveSession":
        """Opens the session's first stream; raises when the server refuses it."""
        session = cls(conn, space, options)
        stream = await session._open_stream(resume=None)
        session._attach(stream)
        session._task = session._loop.create_task(session._run(), name=f"engram-observe-{space}")
        session._schedule_heartbeat()
        return session

    @property
    def usable(self) -> bool:
        return self._ended is None and not self._closing

    async def submit(self, episode: types_pb2.Episode, priority: int) -> "asyncio.Future[Answer]":
        """Queues one observation; waits while ``max_in_flight`` are
        unanswered. The future gets its final answer (after overload retries
        and reconnects), or the error that ended the session."""
        while True:
            future = self.submit_nowait(episode, priority)
            if future is not None:
                return future
            waiter: "asyncio.Future[None]" = self._loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # pass the slot on
                raise

    def submit_nowait(self, episode: types_pb2.Episode, priority: int) -> "Optional[asyncio.Future[Answer]]":
        """:meth:`submit` without waiting: None when no in-flight slot is free."""
        self._check_open()
        if self._free <= 0:
            return None
        self._free -= 1
        future: "asyncio.Future[Answer]" = self._loop.create_future()
        entry = Entry(self._next_seq, episode, priority, future)
        self._next_seq += 1
        self._out.push(entry, self._loop.time())
        self._flush()
        return future

    async def close(self, drain: bool = True) -> Optional[StreamClosed]:
        """Closes the session: with ``drain``, after every observation
        submitted has its answer; without, what is not yet sent is answered
        with a CLOSED rejection. Returns the server's summary (None when the
        session had already failed)."""
        if not self._done.done() and self._ended is None:
            self._closing = True
            self._close_drain = self._close_drain and drain
            if not self._close_drain:
                self._out.reject_waiting("the session was closed (without drain) before this observation was sent")
            self._flush()
        return await asyncio.shield(self._done)

    async def abort(self) -> None:
        """Stops at once: the unanswered observations fail with SessionClosed."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # ----- internals -----

    def _check_open(self) -> None:
        if self._ended is not None:
            raise self._ended.with_traceback(None)  # the same error for every caller; no growing traceback
        if self._closing:
            raise SessionClosed(f"the observe session of space {self._space!r} is closing")

    def _release(self) -> None:
        self._free += 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _emit(self, event: SessionEvent) -> None:
        callback = self._options.on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:  # a broken callback must not break the session
            log.exception("engram_grpc on_event callback failed")

    async def _open_stream(self, resume: Optional[str]) -> _Stream:
        queue: "asyncio.Queue[Optional[streaming_pb2.ObserveRequest]]" = asyncio.Queue()
        queue.put_nowait(
            streaming_pb2.ObserveRequest(
                init=streaming_pb2.StreamInit(
                    memory_space_id=self._space,
                    resume_session_id=resume or "",
                    enable_backpressure=self._options.enable_backpressure,
                )
            )
        )
        if self._options.enable_backpressure:
            # The server reports pressure only when its level changes; ask
            # for the current state, so a stream opened (or resumed) during
            # SLOW_DOWN is paced from its first observation.
            queue.put_nowait(
                streaming_pb2.ObserveRequest(
                    flow=streaming_pb2.FlowControl(
                        action=_BUFFER_STATUS, buffer_remaining=max(0, self._options.max_in_flight - len(self._out))
                    )
                )
            )
        call = self._conn.observe_stream(_requests(queue))
        try:
            msg = await asyncio.wait_for(call.read(), self._options.connect_timeout)
            if msg is EOF:
                raise Unavailable("the server ended the stream before init_ack")
            assert isinstance(msg, streaming_pb2.ObserveResponse)
            if msg.WhichOneof("response") != "init_ack":
                raise ProtocolError(f"expected init_ack as the first response, got {msg.WhichOneof('response')}")
        except BaseException as e:
            # End this attempt's request stream and call, whatever went wrong.
            queue.put_nowait(_END)
            call.cancel()
            if isinstance(e, asyncio.TimeoutError):
                raise RpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no init_ack within {self._options.connect_timeout:g} s"
                ) from None
            if isinstance(e, grpc.aio.AioRpcError):
                error = from_rpc_error(e)
                if e.code() == grpc.StatusCode.INTERNAL:
                    # Perhaps a refusal that grpc.aio misreported (see
                    # Connection.observe_refusal): ask once more.
                    refusal = await self._conn.observe_refusal(self._options.connect_timeout)
                    if refusal is not None and refusal.code != grpc.StatusCode.INTERNAL:
                        error = refusal
                raise error from None
            raise
        return _Stream(call, queue, msg.init_ack)

    def _attach(self, stream: _Stream) -> None:
        self._stream = stream
        self._session_id = stream.ack.session_id
        self._last_write = self._loop.time()
        self.stats.session_id = stream.ack.session_id
        self.stats.connected = True
        self.stats.pacing_rate = None

    def _detach(self) -> None:
        if self._stream is not None:
            self._stream.end()
            self._stream = None
        self.stats.connected = False

    async def _run(self) -> None:
        try:
            while True:
                assert self._stream is not None
                try:
                    closed = await self._read(self._stream)
                except _Broken as broken:
                    self._detach()
                    await self._reconnect(broken.error)
                    continue
                self._finish(closed)
                return
        except EngramError as e:
            self._fail(e)
        except asyncio.CancelledError:
            self._fail(SessionClosed("the observe session was aborted"))
            raise
        except Exception as e:  # a bug: never leave callers waiting
            log.exception("engram_grpc observe session crashed")
            self._fail(SessionClosed(f"the observe session crashed: {e!r}"))

    async def _read(self, stream: _Stream) -> StreamClosed:
        """Reads one stream until the session closes; raises _Broken when the
        stream breaks, an EngramError when the session cannot go on."""
        while True:
            try:
                msg = await stream.call.read()
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                if is_transient(error):
                    raise _Broken(error) from None
                raise error from None
            if msg is EOF:
                raise _Broken(Unavailable("the server ended the stream without closing the session"))
            assert isinstance(msg, streaming_pb2.ObserveResponse)
            kind = msg.WhichOneof("response")
            if kind == "ack":
                self._on_ack(msg.ack)
            elif kind == "status":
                self._on_status(msg.status)
            elif kind == "closed":
                return _convert.stream_closed(msg.closed)
            elif kind == "init_ack":
                raise ProtocolError("a second init_ack on one stream")
            # else: a response kind newer than this client; nothing to do.

    def _on_ack(self, ack: streaming_pb2.ObservationAck) -> None:
        now = self._loop.time()
        outcome = self._out.on_ack(ack, now)
        if isinstance(outcome, Retry):
            until = now + outcome.delay
            self._hold_until = until if self._hold_until is None else max(self._hold_until, until)
            self.stats.retries += 1
            log.debug("overloaded; resending %d after %.3f s", outcome.sequence_number, outcome.delay)
            self._emit(Retrying(self._space, outcome.sequence_number, outcome.retry, outcome.delay, now))
        elif outcome.accepted:
            self.stats.accepted += 1
        else:
            self.stats.rejected += 1
        self._flush()

    def _on_status(self, msg: streaming_pb2.StreamStatus) -> None:
        status = _convert.stream_status(msg)
        if status.state in _PACED_STATES:
            self._pacer.set_rate(status.suggested_rate)
        elif status.state == StreamState.ACTIVE:
            self._pacer.clear()
        self.stats.pacing_rate = self._pacer.rate
        self.stats.last_status = status
        self._emit(StatusReceived(self._space, status, self._pacer.rate, self._loop.time()))
        self._flush()

    def _gate(self) -> Optional[float]:
        """When the next waiting observation may go: the latest of its own
        time, the overload hold and the pacer; None when none is waiting."""
        at = self._out.next_send_at()
        if at is None:
            return None
        if self._hold_until is not None and self._hold_until > at:
            at = self._hold_until
        paced = self._pacer.ready_at()
        if paced is not None and paced > at:
            at = paced
        return at

    def _flush(self) -> None:
        """Writes every observation that may go now, schedules a wake-up for
        the next one that must wait, and sends the close when due."""
        stream = self._stream
        if stream is None or self._close_sent:
            return
        now = self._loop.time()
        wrote = False
        while True:
            at = self._gate()
            if at is None:
                break
            if at > now:
                self._wake_at(at)
                break
            request = self._out.take_next()
            self._pacer.on_sent(now)
            self.stats.sent += 1
            stream.queue.put_nowait(request)
            wrote = True
        if self._closing and (not self._close_drain or len(self._out) == 0):
            stream.queue.put_nowait(streaming_pb2.ObserveRequest(close=streaming_pb2.StreamClose(drain=self._close_drain)))
            self._close_sent = True
            wrote = True
        if wrote:
            self._last_write = now

    def _wake_at(self, at: float) -> None:
        if self._timer is not None and not self._timer.cancelled() and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    def _schedule_heartbeat(self) -> None:
        period = max(0.01, self._options.heartbeat_interval / 2)
        self._heartbeat = self._loop.call_later(period, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        if self._done.done():
            return
        now = self._loop.time()
        if self._stream is not None and now - self._last_write >= self._options.heartbeat_interval:
            self._stream.queue.put_nowait(
                streaming_pb2.ObserveRequest(
                    flow=streaming_pb2.FlowControl(action=_BUFFER_STATUS, buffer_remaining=max(0, self._options.max_in_flight - len(self._out)))
                )
            )
            self._last_write = now
        self._schedule_heartbeat()

    async def _reconnect(self, error: EngramError) -> None:
        """Reconnects with backoff until a stream is up again: resuming the
        session and resending what is unanswered, or, if the server lost the
        session, opening a new one and sending it all again under new
        numbers (episode ids let the server drop what it already stored).
        Raises Unavailable once the attempts are used up."""
        # A new stream starts unpaced: the server re-sends its status.
        self._pacer.clear()
        self._hold_until = None
        policy = self._options.reconnect
        attempt = 0
        wait = True
        while True:
            if wait:
                if attempt >= policy.max_attempts:
                    raise Unavailable(f"gave up reconnecting after {attempt} attempts; last error: {error}")
                delay = policy.delay(attempt)
                attempt += 1
                log.warning("observe stream broke (%s); reconnect attempt %d in %.2f s", error, attempt, delay)
                self._emit(Disconnected(self._space, str(error), attempt, delay, self._loop.time()))
                await asyncio.sleep(delay)
            wait = True
            resume = self._session_id or None
            try:
                stream = await self._open_stream(resume)
            except EngramError as e:
                if resume is not None and e.code == grpc.StatusCode.NOT_FOUND:
                    log.warning("the server lost session %s (%s); opening a new one", resume, e)
                    self._replace_session()
                    wait = False
                    continue
                if is_transient(e):
                    error = e
                    continue
                raise
            if resume is None:
                self._attach(stream)
                resent = 0
            else:
                try:
                    resend = self._out.resume(stream.ack.last_acked_sequence)
                except ValueError as e:
                    log.warning("cannot resume session %s (%s); opening a new one", resume, e)
                    stream.end()
                    self._replace_session()
                    wait = False
                    continue
                self._attach(stream)
                for request in resend:
                    stream.queue.put_nowait(request)
                resent = len(resend)
            self._close_sent = False
            self.stats.reconnects += 1
            self._emit(Reconnected(self._space, stream.ack.session_id, resume is not None, resent, self._loop.time()))
            self._flush()
            return

    def _replace_session(self) -> None:
        self._out.restart_session(self._loop.time())
        self._session_id = ""
        self._close_sent = False
        self.stats.sessions_replaced += 1

    def _stop(self, ended: EngramError) -> None:
        self._ended = ended
        while self._slot_waiters:  # they see the error on waking
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        for handle in (self._timer, self._heartbeat):
            if handle is not None:
                handle.cancel()
        self._detach()

    def _finish(self, closed: StreamClosed) -> None:
        self._out.reject_waiting("the session was closed before this observation was sent")
        self._out.fail_all(SessionClosed("the session was closed before this observation was answered"))
        self._stop(SessionClosed(f"the observe session of space {self._space!r} is closed"))
        if not self._done.done():
            self._done.set_result(closed)

    def _fail(self, error: EngramError) -> None:
        log.warning("observe session of space %r failed: %s", self._space, error)
        self._out.fail_all(error)
        self._stop(error)
        if not self._done.done():
            self._done.set_result(None)

