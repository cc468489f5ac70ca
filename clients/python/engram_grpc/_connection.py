"""The gRPC channel and the calls made on it; every gRPC error leaves this
module as a typed :class:`~engram_grpc.errors.EngramError`."""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, AsyncIterator, Optional, Tuple, TypeVar, Union

import grpc
import grpc.aio

from ._proto.engram.v1 import memory_pb2_grpc, streaming_pb2, streaming_pb2_grpc, types_pb2
from .errors import EngramError, Unavailable, from_rpc_error
from .options import ClientOptions

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: The end of a stream's responses (grpc-stubs does not declare grpc.aio.EOF).
EOF: object = getattr(grpc.aio, "EOF")

#: Responses can be large (1,000 recalled memories with embeddings).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: The standard gRPC health check (an empty HealthCheckRequest asks about
#: the whole server); the server answers it without a key.
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_PROBE_TIMEOUT = 2.0
#: After a stream's response headers, how long a refusal's status may take
#: to follow them (a refusal carries both in one frame; an accepted stream
#: sends no status at all).
_REFUSAL_WAIT = 0.5


_PLAIN_SCHEMES = ("http://", "grpc://")
_TLS_SCHEMES = ("https://", "grpcs://")


def split_target(target: str) -> Tuple[str, Optional[bool]]:
    """``(host:port, tls)``: ``tls`` is True for an ``https://`` or
    ``grpcs://`` target, False for ``http://`` or ``grpc://``, None without
    a scheme (then ``ClientOptions.tls`` decides)."""
    for schemes, tls in ((_PLAIN_SCHEMES, False), (_TLS_SCHEMES, True)):
        for scheme in schemes:
            if target.startswith(scheme):
                return target[len(scheme) :].rstrip("/"), tls
    return target, None


def normalize_target(target: str) -> str:
    """``host:port``; a leading ``http://``/``grpc://`` (as the Rust client
    takes) or ``https://``/``grpcs://`` (TLS) is dropped."""
    return split_target(target)[0]


def resolve_target(target: str, options: ClientOptions) -> Tuple[str, bool]:
    """``(host:port, whether to speak TLS)``; ValueError for settings that
    contradict each other (rather than silently connecting in plaintext)."""
    address, scheme_tls = split_target(target)
    if scheme_tls is False and options.tls:
        raise ValueError(f"target {target!r} names a plaintext scheme but tls=True; use https:// or no scheme")
    tls = options.tls or scheme_tls is True
    if not tls and (options.root_certificates is not None or options.tls_server_name is not None):
        raise ValueError("root_certificates/tls_server_name need TLS: set tls=True or use an https:// target")
    return address, tls


def auth_metadata(options: ClientOptions) -> Optional[Tuple[Tuple[str, str], ...]]:
    """The metadata every call carries: the API key, if any."""
    if not options.api_key:
        return None
    return (("authorization", f"Bearer {options.api_key}"),)


def channel_options(options: ClientOptions) -> list[Tuple[str, Union[int, str]]]:
    opts: list[Tuple[str, Union[int, str]]] = [
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
    if options.tls_server_name is not None:
        opts.append(("grpc.ssl_target_name_override", options.tls_server_name))
    return opts


class Connection:
    """One channel with the two services' stubs; every call made through it
    carries the API key."""

    def __init__(self, target: str, options: ClientOptions) -> None:
        self.target, self.tls = resolve_target(target, options)
        self.options = options
        self._metadata = auth_metadata(options)
        if self.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=options.root_certificates)
            self.channel = grpc.aio.secure_channel(self.target, credentials, options=channel_options(options))
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=channel_options(options))
        self.memory = memory_pb2_grpc.MemoryStub(self.channel)
        self.streaming = streaming_pb2_grpc.StreamingStub(self.channel)

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; Unavailable after ``timeout``
        s, with gRPC's last connection error (a TLS handshake failure, a
        refused connection, ...) when it has one."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            reason = await self._probe()
            if reason is None:
                return  # connected just now
            raise Unavailable(f"could not connect to {self.target} within {timeout:g} s{reason}") from None

    async def _probe(self) -> Optional[str]:
        """Why the channel does not connect (": <gRPC's last error>", or ""),
        found with one fail-fast gRPC health check (which needs no key);
        None if the check got an answer after all."""
        check = self.channel.unary_unary(_HEALTH_CHECK, None, None)
        try:
            await check(b"", timeout=_PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and e.details():
                return f": {e.details()}"
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return ""
            return None  # an answer from a server (UNIMPLEMENTED, ...): it is there
        return None

    async def unary(self, method: "grpc.aio.UnaryUnaryMultiCallable[Req, Resp]", request: Req) -> Resp:
        try:
            return await method(request, timeout=self.options.unary_timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def recall_stream(self, request: types_pb2.RecallRequest) -> AsyncGenerator[types_pb2.RecallResponse, None]:
        call = self.streaming.RecallStream(request, timeout=self.options.unary_timeout, metadata=self._metadata)
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
        return self.streaming.ObserveStream(requests, metadata=self._metadata)

    async def observe_refusal(self, timeout: float) -> Optional[EngramError]:
        """Why the server refuses to open an observe stream (e.g.
        Unauthenticated), or None if it accepts one.

        Works around grpc/grpc#36066 (grpc.aio): when the server ends a
        stream before reading it, as it does when it refuses the key at
        open, a request write that loses the race turns the server's status
        into ``INTERNAL: Internal error from Core``. This opens one stream
        that writes nothing, so the server's status comes through as sent:
        a refusal ends the call right after the response headers; an
        accepted stream stays open and is cancelled here."""
        stop = asyncio.Event()
        call = self.streaming.ObserveStream(_nothing_until(stop), metadata=self._metadata)
        try:
            await asyncio.wait_for(call.initial_metadata(), timeout)
            code = await asyncio.wait_for(call.code(), _REFUSAL_WAIT)
        except asyncio.TimeoutError:
            return None  # no answer in time, or the stream is open: accepted
        except grpc.aio.AioRpcError as e:
            return from_rpc_error(e)
        finally:
            stop.set()  # grpc.aio leaves the request stream of a finished call running
            call.cancel()
        if code == grpc.StatusCode.OK:
            return None
        try:
            await call.read()  # raises the status, with its details and trailers
        except grpc.aio.AioRpcError as e:
            return from_rpc_error(e)
        return None

    async def close(self, grace: Optional[float] = None) -> None:
        await self.channel.close(grace)


async def _nothing_until(stop: asyncio.Event) -> AsyncIterator[streaming_pb2.ObserveRequest]:
    """A request stream that sends nothing and ends once ``stop`` is set."""
    await stop.wait()
    return
    yield  # unreachable: makes this an async generator
