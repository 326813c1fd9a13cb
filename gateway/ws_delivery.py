"""A WebSocketResponse that hands each complete SIP frame to a callback as aiohttp parses it.

aiohttp delivers frames through a queue read by `await ws.receive()`: for every SIP message the
connection's task is woken, resumes, and returns the frame: 6-7 of the 85 us of gateway CPU
per REGISTER -> 401 -> REGISTER -> 200 exchange (bench/register_bench.py's client, memory
store). Here the frame queue is replaced, right after aiohttp builds it, by one whose text and
binary frames go straight to `deliver`; close, error and control frames still reach
`receive()`, which handles them as before. aiohttp has no public hook for this, so it leans on
internals checked by `supported()`; without them the gateway falls back to reading every
frame with `receive()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

try:  # private modules: their absence means the fallback, not an error
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
except ImportError:  # pragma: no cover - depends on the installed aiohttp
    WebSocketDataQueue = WebSocketReader = None  # type: ignore[assignment]

FrameHandler = Callable[[bytes, bool], None]  # (payload, True for a text frame)
_QUEUE_LIMIT = 1 << 16  # only close and control frames are queued now


_RESPONSE_INTERNALS = ("_post_start", "_loop", "_max_msg_size", "_reader", "_parser")
_HANDLER_INTERNALS = ("_message_tail", "_payload_parser")


def supported() -> bool:
    """Every aiohttp internal this module touches is where it expects it."""
    if WebSocketDataQueue is None or not hasattr(web.RequestHandler, "set_parser"):
        return False
    probe = web.WebSocketResponse()
    handler_slots = getattr(web.RequestHandler, "__slots__", ())
    return (all(hasattr(probe, name) for name in _RESPONSE_INTERNALS)
            and all(name in handler_slots for name in _HANDLER_INTERNALS))


class _DeliveringQueue(WebSocketDataQueue):
    def __init__(self, protocol: Any, limit: int, *, loop: Any, deliver: FrameHandler) -> None:
        super().__init__(protocol, limit, loop=loop)
        self.deliver = deliver

    def feed_data(self, data: Any, size: int) -> None:
        kind = data[0]
        if kind is WSMsgType.TEXT:
            self.deliver(data[1], True)
        elif kind is WSMsgType.BINARY:
            self.deliver(data[1], False)
        else:
            super().feed_data(data, size)


class DeliveringWebSocketResponse(web.WebSocketResponse):
    """Text and binary frames go to `deliver`, set before prepare(); as bytes, without the
    UTF-8 check of text that aiohttp makes only when it decodes. `receive()` returns the rest.
    Compression is not offered: the replacement parser does not inflate. Nor is aiohttp's
    heartbeat, which the replacement parser does not re-arm (gateway/ws_keepalive.py pings)."""

    def __init__(self, **options: Any) -> None:
        if options.get("heartbeat") is not None:
            raise ValueError("DeliveringWebSocketResponse does not run aiohttp's heartbeat")
        super().__init__(decode_text=False, compress=False, **options)
        self.deliver: FrameHandler | None = None

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        if self.deliver is None:
            raise RuntimeError("DeliveringWebSocketResponse.deliver must be set before prepare()")
        handler = request.protocol
        # Bytes that came with the upgrade request are kept from aiohttp's own parser, which is
        # replaced below, and fed to the replacement instead.
        tail, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        queue = _DeliveringQueue(handler, _QUEUE_LIMIT, loop=self._loop, deliver=self.deliver)
        parser = WebSocketReader(queue, self._max_msg_size, compress=False, decode_text=False)
        self._reader, self._parser = queue, parser
        handler._payload_parser = None
        handler._message_tail = tail
        handler.set_parser(parser)
