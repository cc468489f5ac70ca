"""A small synchronous client for scripts and notebooks: :class:`Client`
wraps :class:`StreamingClient` on a private event loop in a daemon thread,
so it works the same whether or not the caller has a loop of its own
(Jupyter does)."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Iterable, Iterator, List, Optional, Type, TypeVar

from .client import DEFAULT_SPACE, DEFAULT_TARGET, StreamingClient
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
    RememberResult,
    SpaceInfo,
)

T = TypeVar("T")


class Client:
    """The blocking counterpart of :class:`StreamingClient`, same methods
    and arguments::

        with engram_grpc.Client("localhost:50051", space="notes") as client:
            ack = client.observe({"what": "hello", "embedding": [0.1, 0.2, 0.3]})
            for answer in client.observe_many(episodes):
                ...

    Connects on construction (Unavailable if the server cannot be reached
    within ``options.connect_timeout``).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        space: str = DEFAULT_SPACE,
        options: Optional[ClientOptions] = None,
        **overrides: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engram-grpc-loop", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> StreamingClient:
            return StreamingClient(target, space, options, **overrides)

        try:
            self._client = self._call(make())
            self._call(self._client.connect())
        except BaseException:
            self.close(drain=False)
            raise

    def _call(self, coro: Awaitable[T]) -> T:
        if self._closed:
            close = getattr(coro, "close", None)
            if close is not None:
                close()  # never awaited: say nothing about it
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(_await(coro), self._loop).result()

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._closed:
                self._call(aclose())

    @property
    def space(self) -> str:
        return self._client.space

    def observe(self, episode: EpisodeLike, *, space: Optional[str] = None, priority: Priority = Priority.NORMAL) -> Ack:
        return self._call(self._client.observe(episode, space=space, priority=priority))

    def observe_many(
        self, episodes: Iterable[EpisodeLike], *, space: Optional[str] = None, priority: Priority = Priority.NORMAL
    ) -> Iterator[Answer]:
        """Answers in input order, pipelined like the async version. The
        input iterable is read on the client's loop thread."""
        return self._iterate(self._client.observe_many(episodes, space=space, priority=priority))

    def recall(
        self,
        cue: CueLike,
        *,
        space: Optional[str] = None,
        include_embeddings: bool = False,
        filter: Optional[MemoryFilterLike] = None,
        recency_half_life_seconds: Optional[float] = None,
        after: Optional[ConsistencyToken] = None,
    ) -> RecallResult:
        return self._call(
            self._client.recall(
                cue,
                space=space,
                include_embeddings=include_embeddings,
                filter=filter,
                recency_half_life_seconds=recency_half_life_seconds,
                after=after,
            )
        )

    def recall_stream(
        self,
        cue: CueLike,
        *,
        space: Optional[str] = None,
        batch_size: Optional[int] = None,
        include_embeddings: bool = False,
        filter: Optional[MemoryFilterLike] = None,
        recency_half_life_seconds: Optional[float] = None,
        after: Optional[ConsistencyToken] = None,
    ) -> Iterator[RecallResult]:
        return self._iterate(
            self._client.recall_stream(
                cue,
                space=space,
                batch_size=batch_size,
                include_embeddings=include_embeddings,
                filter=filter,
                recency_half_life_seconds=recency_half_life_seconds,
                after=after,
            )
        )

    def remember(
        self, episode: EpisodeLike, *, space: Optional[str] = None, priority: Priority = Priority.NORMAL
    ) -> RememberResult:
        return self._call(self._client.remember(episode, space=space, priority=priority))

    def forget(self, memory_id: str, *, space: Optional[str] = None) -> None:
        self._call(self._client.forget(memory_id, space=space))

    def create_space(
        self,
        space: Optional[str] = None,
        *,
        dimension: int = 0,
        vector_storage: Optional[str] = None,
        default_ttl_seconds: Optional[float] = None,
    ) -> SpaceInfo:
        return self._call(
            self._client.create_space(
                space, dimension=dimension, vector_storage=vector_storage, default_ttl_seconds=default_ttl_seconds
            )
        )

    def describe_space(self, space: Optional[str] = None) -> SpaceInfo:
        return self._call(self._client.describe_space(space))

    def list_spaces(self) -> List[SpaceInfo]:
        return self._call(self._client.list_spaces())

    def delete_space(self, space: str) -> None:
        self._call(self._client.delete_space(space))

    def session_stats(self, space: Optional[str] = None) -> Optional[SessionStats]:
        return self._client.session_stats(space)

    def close(self, drain: bool = True) -> None:
        """Closes the sessions (draining them), the channel and the loop thread."""
        if self._closed:
            return
        try:
            if hasattr(self, "_client"):
                self._call(self._client.close(drain=drain))
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close(drain=exc_type is None)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable
