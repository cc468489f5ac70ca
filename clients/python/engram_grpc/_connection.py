"""The gRPC channel and the calls made on it; every gRPC error leaves this
module as a typed :class:`~engram_grpc.errors.EngramError`."""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, AsyncIterator, Optional, Tuple, TypeVar

import grpc
import grpc.aio

from ._proto.engram.v1 import memory_pb2_grpc, streaming_pb2, streaming_pb2_grpc, types_pb2
from .errors import Unavailable, from_rpc_error
from .options import ClientOptions

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: The end of a stream's responses (grpc-stubs does not declare grpc.aio.EOF).
EOF: object = getattr(grpc.aio, "EOF")

#: Responses can be large (1,000 recalled memories with embeddings).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def normalize_target(target: str) -> str:
    """``host:port``; a leading ``http://`` (as the Rust client takes) is dropped."""
    for scheme in ("http://", "grpc://"):
        if target.startswith(scheme):
            return target[len(scheme) :].rstrip("/")
    return target


def channel_options(options: ClientOptions) -> list[Tuple[str, int]]:
    opts = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # gRPC's own reconnect backoff (default 1 s growing to 120 s) would
        # hold our reconnects back long after a restarted server is up.
        ("grpc.initial_reconnect_backoff_ms", max(1, int(options.reconnect.initial * 1000))),
        ("grpc.min_reconnect_backoff_ms", max(1, int(options.reconnect.initial * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(options.reconnect.max * 1000))),
    ]
    if options.keepalive_interval is not None:
        opts += [
            ("grpc.keepalive_time_ms", int(options.keepalive_interval * 1000)),
            ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return opts


class Connection:
    """One channel with the two services' stubs."""

    def __init__(self, target: str, options: ClientOptions) -> None:
        self.target = normalize_target(target)
        self.options = options
        self.channel = grpc.aio.insecure_channel(self.target, options=channel_options(options))
        self.memory = memory_pb2_grpc.MemoryStub(self.channel)
        self.streaming = streaming_pb2_grpc.StreamingStub(self.channel)

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; Unavailable after ``timeout`` s."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout:g} s") from None

    async def unary(self, method: "grpc.aio.UnaryUnaryMultiCallable[Req, Resp]", request: Req) -> Resp:
        try:
            return await method(request, timeout=self.options.unary_timeout)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def recall_stream(self, request: types_pb2.RecallRequest) -> AsyncGenerator[types_pb2.RecallResponse, None]:
        call = self.streaming.RecallStream(request, timeout=self.options.unary_timeout)
        try:
            while True:
                msg = await call.read()
                if msg is EOF:
                    return
                assert isinstance(msg, types_pb2.RecallResponse)
                yield msg
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    def observe_stream(
        self, requests: AsyncIterator[streaming_pb2.ObserveRequest]
    ) -> "grpc.aio.StreamStreamCall[streaming_pb2.ObserveRequest, streaming_pb2.ObserveResponse]":
        return self.streaming.ObserveStream(requests)

    async def close(self, grace: Optional[float] = None) -> None:
        await self.channel.close(grace)
