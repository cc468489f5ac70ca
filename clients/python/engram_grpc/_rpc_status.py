"""Reads ``google.rpc.RetryInfo`` out of a ``grpc-status-details-bin`` trailer.

A minimal protobuf wire reader for the three small messages involved
(``google.rpc.Status``, ``google.protobuf.Any`` and ``google.rpc.RetryInfo``
with its ``Duration``), so the client needs no googleapis-common-protos and
registers no ``google.rpc`` names in the global descriptor pool.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[Tuple[int, Union[int, bytes]]]:
    """(field number, value) pairs: ints for varints, bytes for the rest."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + size]
            pos += size
        elif wire == 1:
            yield number, data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            yield number, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def retry_delay_from_details(details: Optional[bytes]) -> Optional[float]:
    """The RetryInfo delay in seconds, or None when there is none (or the
    trailer cannot be parsed)."""
    if not details:
        return None
    try:
        for number, value in _fields(details):
            if number != 3 or not isinstance(value, bytes):  # Status.details: repeated Any
                continue
            type_url = ""
            payload = b""
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    type_url = v.decode("utf-8", "replace")
                elif n == 2 and isinstance(v, bytes):
                    payload = v
            if type_url != _RETRY_INFO_TYPE:
                continue
            seconds = 0
            nanos = 0
            for n, v in _fields(payload):  # RetryInfo.retry_delay = 1
                if n == 1 and isinstance(v, bytes):
                    for dn, dv in _fields(v):
                        if dn == 1 and isinstance(dv, int):
                            seconds = _signed64(dv)
                        elif dn == 2 and isinstance(dv, int):
                            nanos = _signed64(dv)
            return max(0.0, seconds + nanos / 1e9)
    except ValueError:
        return None
    return None
