"""The asyncio client: :class:`StreamingClient`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from types import TracebackType
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Type,
    Union,
    cast,
)

from . import _convert
from ._connection import Connection, normalize_target, resolve_target
from ._proto.engram.v1 import memory_pb2, types_pb2
from ._session import ObserveSession
from .errors import Rejected, SessionClosed
from .events import SessionStats
from .options import ClientOptions
from .types import (
    Ack,
    Answer,
    ConsistencyToken,
    CueLike,
    EpisodeLike,
    MemoryFilterLike,
    Priority,
    RecallResult,
    Rejection,
    RememberResult,
    SpaceInfo,
    StreamClosed,
)

DEFAULT_TARGET = "localhost:50051"
DEFAULT_SPACE = "default"


class StreamingClient:
    """An asyncio client for one engram server.

    ``space`` is the memory space every call uses unless it passes its own
    ``space=``. Observations go over one long-lived observe stream per space,
    opened on first use; unary helpers and recalls use plain calls on the
    same channel::

        async with StreamingClient("localhost:50051", space="notes") as client:
            ack = await client.observe({"what": "hello", "embedding": [0.1, 0.2, 0.3]})
            async for answer in client.observe_many(episodes):
                ...
            result = await client.recall([0.1, 0.2, 0.3])

    Entering the context waits (up to ``options.connect_timeout``) for the
    connection; leaving it closes every observe session after draining
    (every observation submitted gets its answer) and then the channel.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        space: str = DEFAULT_SPACE,
        options: Optional[ClientOptions] = None,
        **overrides: Any,
    ) -> None:
        """``overrides`` are :class:`ClientOptions` fields, applied on top of
        ``options`` (e.g. ``StreamingClient(target, max_in_flight=256)``).

        ``target``: ``host:port``; ``https://host:port`` (or ``grpcs://``)
        means TLS, like ``tls=True``. With an ``api_key`` every call carries
        it; with TLS the server's certificate is checked against
        ``root_certificates`` (the system's roots when None)."""
        base = options or ClientOptions()
        if overrides:
            base = _replace(base, overrides)
        resolve_target(target, base)  # contradicting TLS settings fail here, not on first use
        self.options = base
        self.space = space
        self._target = target
        # Made on first use, so that it binds to the event loop that runs
        # the client even when the client is constructed outside it.
        self._connection: Optional[Connection] = None
        self._sessions: Dict[str, ObserveSession] = {}
        self._opening: Dict[str, "asyncio.Task[ObserveSession]"] = {}
        self._closed = False

    @property
    def target(self) -> str:
        return normalize_target(self._target)

    @property
    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = Connection(self._target, self.options)
        return self._connection

    # ----- lifecycle -----

    async def connect(self) -> None:
        """Waits until the channel is connected (Unavailable after
        ``options.connect_timeout``). Optional: calls connect on demand."""
        await self._conn.wait_ready(self.options.connect_timeout)

    async def __aenter__(self) -> "StreamingClient":
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close(drain=exc_type is None)

    async def close(self, drain: bool = True) -> None:
        """Closes every observe session (with ``drain``: once everything
        submitted is answered), then the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._opening.values()):
            task.cancel()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        try:
            await asyncio.gather(*(s.close(drain) for s in sessions), return_exceptions=True)
        finally:
            for s in sessions:
                await s.abort()
            if self._connection is not None:
                await self._connection.close()

    async def close_space(self, space: Optional[str] = None, drain: bool = True) -> Optional[StreamClosed]:
        """Closes the observe session of one space; returns the server's
        summary (None if there was no open session)."""
        session = self._sessions.pop(space or self.space, None)
        if session is None:
            return None
        return await session.close(drain)

    def session_stats(self, space: Optional[str] = None) -> Optional[SessionStats]:
        """The live counters of the observe session of ``space`` (None
        before its first observation)."""
        session = self._sessions.get(space or self.space)
        return None if session is None else session.stats

    # ----- observe -----

    async def _session(self, space: Optional[str]) -> ObserveSession:
        if self._closed:
            raise SessionClosed("the client is closed")
        name = space or self.space
        session = self._sessions.get(name)
        if session is not None and session.usable:
            return session
        task = self._opening.get(name)
        if task is None:
            task = asyncio.ensure_future(ObserveSession.open(self._conn, name, self.options))
            self._opening[name] = task
            task.add_done_callback(lambda t: self._opened(name, t))
        # Shielded: a caller cancelled while the stream opens does not
        # cancel the opening that other callers share.
        return await asyncio.shield(task)

    def _opened(self, name: str, task: "asyncio.Task[ObserveSession]") -> None:
        self._opening.pop(name, None)
        if task.cancelled() or task.exception() is not None:
            return
        session = task.result()
        if self._closed:  # the client closed while this session opened
            asyncio.ensure_future(session.abort())
        else:
            self._sessions[name] = session

    async def submit(
        self, episode: EpisodeLike, *, space: Optional[str] = None, priority: Priority = Priority.NORMAL
    ) -> "asyncio.Future[Answer]":
        """Queues one observation and returns a future of its answer (an
        :class:`Ack` or a :class:`Rejection`) without waiting for it; waits
        only while ``max_in_flight`` observations are unanswered. The
        building block of :meth:`observe` and :meth:`observe_many`."""
        session = await self._session(space)
        message = _convert.episode_to_proto(episode, assign_id=self.options.assign_episode_ids)
        return await session.submit(message, int(priority))

    async def observe(
        self, episode: EpisodeLike, *, space: Optional[str] = None, priority: Priority = Priority.NORMAL
    ) -> Ack:
        """Streams one observation; returns its ack once it is durable (and
        visible to recalls). Raises :class:`Rejected` when the server rejects
        it (invalid input, or still overloaded after the client's retries)."""
        answer = await (await self.submit(episode, space=space, priority=priority))
        if isinstance(answer, Rejection):
            raise Rejected(answer)
        return answer

    async def observe_many(
        self,
        episodes: Union[Iterable[EpisodeLike], AsyncIterable[EpisodeLike]],
        *,
        space: Optional[str] = None,
        priority: Priority = Priority.NORMAL,
    ) -> AsyncIterator[Answer]:
        """Streams every episode, pipelined (up to ``max_in_flight`` in
        flight), and yields one answer per episode in input order: an
        :class:`Ack`, or a :class:`Rejection` for one the server refused
        (the stream goes on). Errors that end the session (every reconnect
        failed, ...) are raised."""
        session = await self._session(space)
        if isinstance(episodes, AsyncIterable):
            stream = self._observe_async_iterable(session, episodes, int(priority))
        else:
            stream = self._observe_iterable(session, episodes, int(priority))
        try:
            async for answer in stream:
                yield answer
        finally:
            await stream.aclose()  # now, not whenever the generator is collected

    async def _observe_iterable(
        self, session: ObserveSession, episodes: Iterable[EpisodeLike], priority: int
    ) -> AsyncGenerator[Answer, None]:
        """observe_many for a plain iterable, without a helper task: top the
        window of unanswered observations up (as far as free slots allow),
        then yield the oldest answer. An error reading or converting an
        episode is raised after the answers of the episodes before it."""
        assign = self.options.assign_episode_ids
        limit = max(1, self.options.max_in_flight)
        window: Deque["asyncio.Future[Answer]"] = deque()
        items = iter(episodes)
        held: Optional[types_pb2.Episode] = None
        exhausted = False
        error: Optional[BaseException] = None
        while True:
            while len(window) < limit:
                if held is None:
                    if exhausted:
                        break
                    try:
                        held = _convert.episode_to_proto(next(items), assign_id=assign)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as e:
                        error, exhausted = e, True
                        break
                future = session.submit_nowait(held, priority)
                if future is None:
                    if window:
                        break  # slots free up as answers arrive
                    future = await session.submit(held, priority)  # others hold every slot
                window.append(future)
                held = None
            if not window:
                if error is not None:
                    raise error
                return
            head = window.popleft()
            yield head.result() if head.done() else await head

    async def _observe_async_iterable(
        self, session: ObserveSession, episodes: AsyncIterable[EpisodeLike], priority: int
    ) -> AsyncGenerator[Answer, None]:
        """observe_many for an async iterable: a helper task reads and
        submits, so answers flow while the source is slow."""
        assign = self.options.assign_episode_ids
        pending: "asyncio.Queue[Union[asyncio.Future[Answer], _Stop]]" = asyncio.Queue(
            maxsize=max(1, self.options.max_in_flight)
        )

        async def feed() -> None:
            try:
                async for item in episodes:
                    message = _convert.episode_to_proto(item, assign_id=assign)
                    await pending.put(await session.submit(message, priority))
                await pending.put(_Stop(None))
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # handed to the consumer, in order
                await pending.put(_Stop(e))

        feeder = asyncio.ensure_future(feed())
        try:
            while True:
                item = await pending.get()
                if isinstance(item, _Stop):
                    if item.error is not None:
                        raise item.error
                    return
                yield await item
        finally:
            feeder.cancel()
            try:
                await feeder
            except asyncio.CancelledError:
                pass

    # ----- recall -----

    async def recall(
        self,
        cue: CueLike,
        *,
        space: Optional[str] = None,
        include_embeddings: bool = False,
        filter: Optional[MemoryFilterLike] = None,
        recency_half_life_seconds: Optional[float] = None,
        after: Optional[ConsistencyToken] = None,
    ) -> RecallResult:
        """The most similar memories to ``cue`` (a :class:`Cue`, a dict, or
        a bare embedding), including everything acked before the call.

        ``filter`` (a :class:`MemoryFilter` or a dict with its keys): only
        memories whose tags and metadata match are candidates; the recall
        returns ``min(max_results, matching memories)``. Or set the cue's
        ``filter``; giving both raises ``ValueError``.

        ``recency_half_life_seconds``: rank by ``score = similarity x
        0.5^(age / half-life)`` instead of similarity alone, so newer
        memories come first among similar ones (see :class:`Cue`); each
        memory's ``score`` and ``recency_weight`` say how it ranked. Or set
        the cue's; giving both raises ``ValueError``.

        ``after`` (cluster mode): an ack's ``token``; the recall, on any
        node, waits (bounded, by the server) until that write is applied,
        so it sees it. A single node ignores it."""
        request = _convert.recall_request(
            space or self.space,
            cue,
            include_embeddings,
            filter=filter,
            recency_half_life_seconds=recency_half_life_seconds,
            after=after,
        )
        response = await self._conn.unary(self._conn.memory.Recall, request)
        return _convert.recall_result(response, request.cue.recency_half_life_seconds != 0.0)

    async def recall_stream(
        self,
        cue: CueLike,
        *,
        space: Optional[str] = None,
        batch_size: Optional[int] = None,
        include_embeddings: bool = False,
        filter: Optional[MemoryFilterLike] = None,
        recency_half_life_seconds: Optional[float] = None,
        after: Optional[ConsistencyToken] = None,
    ) -> AsyncIterator[RecallResult]:
        """One recall, its results in batches of ``batch_size`` (default
        ``options.recall_batch_size``; 0 = one batch). The first batch comes
        before the full search is done; the last has ``more=False``.
        ``filter``, ``recency_half_life_seconds``, ``after``: as for
        :meth:`recall`."""
        size = self.options.recall_batch_size if batch_size is None else batch_size
        request = _convert.recall_request(
            space or self.space, cue, include_embeddings, size, filter, recency_half_life_seconds, after
        )
        recency = request.cue.recency_half_life_seconds != 0.0
        batches = self._conn.recall_stream(request)
        try:
            async for msg in batches:
                yield _convert.recall_result(msg, recency)
        finally:
            await batches.aclose()  # cancels the call if the caller stopped early

    # ----- unary helpers -----

    async def remember(
        self, episode: EpisodeLike, *, space: Optional[str] = None, priority: Priority = Priority.NORMAL
    ) -> RememberResult:
        """Stores one episode with a unary call (no stream). Over capacity it
        raises :class:`Overloaded` with the server's ``retry_after``."""
        request = memory_pb2.RememberRequest(
            memory_space_id=space or self.space,
            episode=_convert.episode_to_proto(episode, assign_id=False),
            priority=cast(Any, int(priority)),
        )
        return _convert.remember_result(await self._conn.unary(self._conn.memory.Remember, request))

    async def forget(self, memory_id: str, *, space: Optional[str] = None) -> None:
        request = memory_pb2.ForgetRequest(memory_space_id=space or self.space, memory_id=memory_id)
        await self._conn.unary(self._conn.memory.Forget, request)

    async def create_space(
        self,
        space: Optional[str] = None,
        *,
        dimension: int = 0,
        vector_storage: Optional[str] = None,
        default_ttl_seconds: Optional[float] = None,
    ) -> SpaceInfo:
        """Creates the space (``dimension`` 0: the server's default, 768);
        an existing space of that dimension is fine, another dimension
        raises :class:`AlreadyExists`.

        ``vector_storage``: where the server keeps the exact vectors of the
        space's indexed memories, ``"memory"`` (in RAM) or ``"compact"`` (in a
        file on its disk, RAM holding 8-bit codes; recall re-scores its best
        candidates from that file); ``None``: the server's default
        (``engine.vector_storage``). An existing space with another storage
        raises :class:`AlreadyExists`; another string raises ``ValueError``
        before anything is sent.

        ``default_ttl_seconds``: the time to live of memories observed
        without an expiry of their own (``Episode.expires_at`` /
        ``ttl_seconds``), in seconds after the server accepts them, at most
        100 years; 0: none; ``None``: unset, which matches any existing
        space (a new one gets none). An existing space with another value
        raises :class:`AlreadyExists`; a value out of range
        :class:`InvalidArgument`; a non-number ``TypeError``."""
        request = memory_pb2.CreateSpaceRequest(
            memory_space_id=space or self.space,
            dimension=dimension,
            vector_storage=_convert.vector_storage_to_proto(vector_storage),
        )
        ttl = _convert.default_ttl_seconds(default_ttl_seconds)
        if ttl is not None:
            request.default_ttl_seconds = ttl
        response = await self._conn.unary(self._conn.memory.CreateSpace, request)
        return _convert.space_info(response.space)

    async def describe_space(self, space: Optional[str] = None) -> SpaceInfo:
        request = memory_pb2.DescribeSpaceRequest(memory_space_id=space or self.space)
        response = await self._conn.unary(self._conn.memory.DescribeSpace, request)
        return _convert.space_info(response.space)

    async def list_spaces(self) -> List[SpaceInfo]:
        response = await self._conn.unary(self._conn.memory.ListSpaces, memory_pb2.ListSpacesRequest())
        return [_convert.space_info(s) for s in response.spaces]

    async def delete_space(self, space: str) -> None:
        """Deletes the space and its memories (the id is required, never the default)."""
        await self.close_space(space, drain=False)
        await self._conn.unary(self._conn.memory.DeleteSpace, memory_pb2.DeleteSpaceRequest(memory_space_id=space))


class _Stop:
    """The end of observe_many's input (with the error that ended it, if any)."""

    def __init__(self, error: Optional[BaseException]) -> None:
        self.error = error


def _replace(options: ClientOptions, overrides: Dict[str, Any]) -> ClientOptions:
    known = {f.name for f in dataclasses.fields(ClientOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; see engram_grpc.ClientOptions")
    return dataclasses.replace(options, **overrides)
