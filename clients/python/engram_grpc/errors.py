"""The exceptions of the client, and the one mapping from gRPC errors to them.

Every exception derives from :class:`EngramError`. Per-observation rejections
on a stream come back from :meth:`StreamingClient.observe` as
:class:`Rejected` (and as :class:`~engram_grpc.types.Rejection` values from
``observe_many``, which does not stop at one bad observation).
"""

from __future__ import annotations

from typing import Optional

import grpc

from ._rpc_status import retry_delay_from_details
from .types import Rejection, RejectReason


class EngramError(Exception):
    """Base of every error raised by this package."""

    #: The gRPC status code behind the error, when it came from one.
    code: Optional[grpc.StatusCode] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(EngramError):
    """The server refused the request as malformed (``INVALID_ARGUMENT``):
    wrong dimension, NaN in an embedding, a bad space id, ..."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(EngramError):
    """The space, memory or session does not exist (``NOT_FOUND``)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(EngramError):
    """The space exists with another dimension or vector storage
    (``ALREADY_EXISTS``)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Overloaded(EngramError):
    """The server is over capacity (``RESOURCE_EXHAUSTED`` with a
    ``google.rpc.RetryInfo``): try again after :attr:`retry_after` seconds
    (``None`` when the server gave no hint)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: Optional[float]) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(EngramError):
    """The server cannot be reached, is shutting down or still recovering
    (``UNAVAILABLE``); for streams: every reconnect attempt failed."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(EngramError):
    """The server wants an API key and got none, or one it does not know
    (``UNAUTHENTICATED``). Set ``ClientOptions.api_key``; retrying with the
    same key does not help."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(EngramError):
    """The API key is valid but lacks the role the call needs on its space
    (``PERMISSION_DENIED``): read for recalls and describing, write for
    storing, forgetting and creating, admin for deleting spaces."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RpcError(EngramError):
    """Any other gRPC status (the code is in :attr:`code`)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class ProtocolError(EngramError):
    """The server said something the protocol does not allow (an ack out of
    order, a missing init_ack, ...). A bug on one side; never retried."""


class SessionClosed(EngramError):
    """The observe session is closed (by the caller, or because it failed);
    the message says why."""


class Rejected(EngramError):
    """The server answered an observation with ``ACK_REJECTED`` (after the
    client's own retries, for overload). Details in :attr:`rejection`;
    :attr:`reason` ``UNAUTHORIZED`` means the API key lacks write on the
    stream's space (never retried; the stream goes on)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"observation {rejection.sequence_number} rejected ({rejection.reason.name}): {rejection.message}")
        self.rejection = rejection
        #: The server's explanation (``str(error)`` adds the number and reason).
        self.message = rejection.message

    @property
    def reason(self) -> RejectReason:
        return self.rejection.reason

    @property
    def retry_after(self) -> Optional[float]:
        return self.rejection.retry_after


def from_rpc_error(error: grpc.RpcError) -> EngramError:
    """The typed exception for a failed call."""
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    message = details or str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(message)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Only RESOURCE_EXHAUSTED with RetryInfo is the server's admission
        # control; without it, it is one of gRPC's own limits (message
        # size, ...), which waiting will not fix.
        delay = retry_delay_from_details(_trailing_metadata(error))
        if delay is not None:
            return Overloaded(message, delay)
    return RpcError(code, message)


def _trailing_metadata(error: grpc.RpcError) -> Optional[bytes]:
    trailing = getattr(error, "trailing_metadata", None)
    if trailing is None:
        return None
    for key, value in trailing() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return value
    return None


def is_transient(error: EngramError) -> bool:
    """True when an observe stream that ended with ``error`` should be
    reconnected (and its session resumed) rather than given up.

    Transport failures surface as ``UNAVAILABLE``, ``UNKNOWN``, ``INTERNAL``,
    ``CANCELLED`` or ``DEADLINE_EXCEEDED``; the server uses ``UNAVAILABLE``
    while it shuts down or recovers. ``ABORTED`` is not retried: another
    stream took the session over (or it idled out), and fighting over a
    session would loop. Neither are ``UNAUTHENTICATED`` and
    ``PERMISSION_DENIED``: the same key would be refused again.
    """
    return error.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
