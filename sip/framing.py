"""Cutting a byte stream (TCP, TLS) into SIP messages by Content-Length (RFC 3261 §18.3).

Also recognises RFC 5626 keep-alives: a double CRLF ping (answered by a single CRLF pong) and
the lone CRLF pong, which carry no message.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import SipError
from .grammar import parse_decimal
from .message import DEFAULT_LIMITS, Limits

PING = b"\r\n\r\n"
PONG = b"\r\n"


class KeepAlivePing:
    """Marker yielded by the framer for a double-CRLF ping: the transport answers with PONG."""


KEEPALIVE_PING = KeepAlivePing()


class StreamFramer:
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buffer = bytearray()
        self._limits = limits
        # Progress on the message at the head of the buffer, so that data trickling in a few
        # octets at a time is scanned once rather than from the start on every feed.
        self._scanned = 0
        self._expected_total: int | None = None

    def feed(self, data: bytes) -> Iterator[bytes | KeepAlivePing]:
        """Yield complete messages (bytes) and pings; keep partial data for the next feed.

        Raises SipError when the stream cannot be framed any more (the connection must close).
        """
        buffer = self._buffer
        buffer += data
        while buffer:
            if buffer[0] in b"\r\n":
                if buffer.startswith(PING):
                    del buffer[:4]
                    yield KEEPALIVE_PING
                    continue
                if len(buffer) < len(PING) and PING.startswith(buffer):
                    # A ping split across segments, or a lone pong: only more data can tell.
                    return
                # A pong (or stray line end) before the next message; drop it, never more.
                del buffer[: 2 if buffer.startswith(PONG) else 1]
                continue
            total = self._expected_total
            if total is None:
                end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
                if end < 0:
                    if len(buffer) > self._limits.max_message_size:
                        raise SipError(513, "Message Too Large: no end of headers")
                    self._scanned = len(buffer)
                    return
                total = end + 4 + _content_length(bytes(buffer[:end]))
                if total > self._limits.max_message_size:
                    raise SipError(513, "Message Too Large")
                self._expected_total = total
            if len(buffer) < total:
                return
            message = bytes(buffer[:total])
            del buffer[:total]
            self._scanned = 0
            self._expected_total = None
            yield message

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _content_length(head: bytes) -> int:
    declared = [
        value
        for name, colon, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        # A folded continuation (leading SP/HTAB) is part of the previous header's value, even
        # when it reads like "l: 5".
        if colon and name[:1] not in (b" ", b"\t")
        and name.rstrip(b" \t").lower() in (b"content-length", b"l")
    ]
    if not declared:
        # RFC 3261 §18.3: Content-Length is mandatory on streams.
        raise SipError(400, "Missing Content-Length on a stream transport")
    if len(declared) > 1:
        # RFC 4475 §3.3.9 (mcl01): with two lengths the stream cannot be framed safely.
        raise SipError(400, "More than one Content-Length header")
    return parse_decimal(declared[0].decode("latin-1"), "Content-Length")
