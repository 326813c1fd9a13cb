"""SIP over WebSocket (RFC 7118) on aiohttp: the flows browsers and mobile apps connect on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from sip.flow import Flow
from sip.tasks import TaskSet
from sip.transport import OVERLOAD_RETRY_AFTER, TransportLayer

from . import ws_delivery
from .dispatch import DRAINING_RETRY_AFTER
from .edge_guard import EdgeGuard
from .ws_delivery import DeliveringWebSocketResponse
from .ws_keepalive import WebSocketKeepalive

log = logging.getLogger(f"ws2sip.{__name__}")
# The close handshakes the flows start on their own (bad UTF-8, closing a flow): one set for
# all, as they outlive nothing but their connection.
_closing = TaskSet(log, "closing a WebSocket")

_flow_numbers = itertools.count(1)
# A peer with this much unread data queued is not reading: close rather than buffer forever.
SLOW_CONSUMER_BYTES = 1 << 20


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_SHORT_HEADER = struct.Struct("!BB").pack
_MEDIUM_HEADER = struct.Struct("!BBH").pack  # most SIP messages: 126 bytes to 64 KB
_LONG_HEADER = struct.Struct("!BBQ").pack


_PING_FRAME = b"\x89\x00"  # FIN + ping, no payload; a server's frames are not masked


def _frame_header(opcode: int, length: int) -> bytes:
    if length < 126:
        return _SHORT_HEADER(opcode, length)
    if length < 1 << 16:
        return _MEDIUM_HEADER(opcode, 126, length)
    return _LONG_HEADER(opcode, 127, length)


@dataclass(frozen=True, slots=True)
class WebSocketPolicy:
    allowed_origins: tuple[str, ...]  # "*" allows any Origin
    max_message_size: int
    ping_interval: float
    idle_timeout: float


class _FrameBatch:
    """The frames that WebSocket flows send during one loop turn, written when its callbacks are
    done: one write per connection, after all of the turn's reads.

    Written at once instead, a response interleaves with the turn's remaining reads, and the
    kernel wakes the peer for every single frame, on the gateway's CPU time: 12-20 us more per
    REGISTER + 401 + REGISTER + 200 (bench/register_bench.py's client, alternating runs).
    """

    def __init__(self) -> None:
        self._flows: list[WebSocketFlow] = []

    def add(self, flow: WebSocketFlow) -> None:
        if not self._flows:
            asyncio.get_running_loop().call_soon(self._write)
        self._flows.append(flow)

    def _write(self) -> None:
        flows, self._flows = self._flows, []
        for flow in flows:
            flow.write_queued()


class WebSocketFlow(Flow):
    """One WebSocket connection; send() queues and never blocks."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, secure: bool,
        layer: TransportLayer, batch: _FrameBatch,
    ) -> None:
        self._ws = ws
        self._layer = layer
        self._batch = batch
        self._outgoing: list[bytes] = []
        peer = request.transport.get_extra_info("peername") if request.transport else None
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        super().__init__(
            f"{'wss' if secure else 'ws'}:{next(_flow_numbers)}",
            "wss" if secure else "ws",
            (sock[0], sock[1]) if sock else ("0.0.0.0", 0),
            (peer[0], peer[1]) if peer else ("0.0.0.0", 0),
            secure=secure,
        )
        self._transport = request.transport

    def send(self, data: bytes) -> None:
        """Queue one SIP message as one frame for the end of this loop turn (_FrameBatch).
        aiohttp only offers an awaitable send, which would cost a task per message on the
        hottest path; a server frame is just a header and the payload (RFC 6455 §5.2: unmasked,
        and no extension since compression is refused)."""
        transport = self._transport
        if self._ws.closed or transport is None or transport.is_closing():
            log.debug("dropping %d bytes for closed %s", len(data), self.id)
            return
        if transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
            log.warning("%s: peer does not read (%d bytes queued); closing", self.id,
                        transport.get_write_buffer_size())
            self.close()
            return
        # FIN + text, what JsSIP, SIP.js and sipml5 expect; FIN + binary when it is not UTF-8.
        opcode = 0x81 if data.isascii() or _is_utf8(data) else 0x82
        frame = _frame_header(opcode, len(data)) + data
        if self._outgoing:
            self._outgoing.append(frame)
        else:
            self._outgoing = [frame]
            self._batch.add(self)

    def write_queued(self) -> None:
        frames, self._outgoing = self._outgoing, []
        transport = self._transport
        if self._ws.closed or transport is None or transport.is_closing():
            log.debug("dropping %d frames for closed %s", len(frames), self.id)
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def frame_received(self, data: bytes, text: bool) -> None:
        """One SIP message from the peer, from aiohttp's frame parser or from ws.receive()."""
        if text and not data.isascii() and not _is_utf8(data):
            # RFC 6455 §8.1, which aiohttp checks only when it decodes text itself.
            log.info("%s: text frame is not UTF-8; closing", self.id)
            _closing.spawn(
                self._ws.close(code=WSCloseCode.INVALID_TEXT, message=b"text frame not UTF-8"))
            return
        self._layer.receive(data, self)

    def ping(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_PING_FRAME)

    def abort(self, reason: str) -> None:
        """Drop a peer that stopped answering: no close handshake it would not answer either."""
        log.info("%s: %s; dropping the connection", self.id, reason)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if not self._ws.closed:
            _closing.spawn(self._ws.close(code=WSCloseCode.GOING_AWAY))

    @property
    def closed(self) -> bool:
        return self._ws.closed


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Refuse cross-site WebSocket hijacking: only listed origins, or the gateway's own pages.

    Native clients send no Origin and are allowed; they authenticate with digest like everyone.
    """
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/") in allowed:
        return True
    host = urlsplit(origin).netloc
    return bool(host) and host.lower() == request.host.lower()


def make_handler(
    transport: TransportLayer, policy: WebSocketPolicy, *, secure: bool,
    on_flow_open: Callable[[WebSocketFlow], None] | None = None,
    direct_delivery: bool = ws_delivery.supported(),
    guard: EdgeGuard | None = None, draining: Callable[[], bool] | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """direct_delivery: SIP frames go from aiohttp's parser straight to the transport layer
    (gateway/ws_delivery.py) instead of through ws.receive(). guard: the per-IP connection
    cap, bans and the deadline for authenticating (gateway/edge_guard.py). draining: true while
    the node drains (gateway/lifecycle.py): new WebSockets get 503, to go to another node."""
    keepalive = WebSocketKeepalive(policy.ping_interval) if policy.ping_interval > 0 else None
    batch = _FrameBatch()

    async def handle(request: web.Request) -> web.StreamResponse:
        # Subprotocol tokens compare case-sensitively (RFC 6455 §4.2.2): aiohttp answers only an
        # exact "sip", and a 101 without it makes browsers fail the connection.
        offered = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        if "sip" not in offered:
            log.info("WebSocket from %s refused: no 'sip' subprotocol", request.remote)
            return web.Response(
                status=400, text="SIP over WebSocket needs the 'sip' subprotocol (RFC 7118)\n"
            )
        if not origin_allowed(request, policy.allowed_origins):
            log.warning(
                "WebSocket from %s refused: Origin %s not allowed",
                request.remote, request.headers.get("Origin"),
            )
            return web.Response(status=403, text="Origin not allowed\n")
        if draining is not None and draining():
            return web.Response(status=503, text="draining: connect to another node\n",
                                headers={"Retry-After": str(DRAINING_RETRY_AFTER)})
        if not transport.has_room_for_flow():
            transport.log_overload(f"flow table full ({transport.max_flows} flows)")
            return web.Response(status=503, text="Too many connections\n",
                                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER)})
        source_ip = request.remote or ""
        if guard is not None:
            refusal = guard.connection_refusal(source_ip)
            if refusal is not None:
                status, reason = refusal
                return web.Response(status=status, text=f"{reason}\n",
                                    headers={"Retry-After": "60"})
        try:
            return await serve(request)
        finally:
            if guard is not None:
                guard.connection_closed(source_ip)

    async def serve(request: web.Request) -> web.WebSocketResponse:
        # Pings are the keepalive's (gateway/ws_keepalive.py), not aiohttp's heartbeat; pings
        # and pongs from the peer come out of receive() to _pump.
        options: dict[str, Any] = {
            "protocols": ("sip",),
            "autoping": False,
            "max_msg_size": policy.max_message_size,
        }
        ws: web.WebSocketResponse
        if direct_delivery:
            ws = DeliveringWebSocketResponse(**options)
        else:
            # Bytes, as SIP is parsed: no UTF-8 decode and re-encode per frame. SIP messages are
            # small and send() writes uncompressed frames.
            ws = web.WebSocketResponse(decode_text=False, compress=False, **options)
        flow = WebSocketFlow(ws, request, secure, transport, batch)
        if isinstance(ws, DeliveringWebSocketResponse):
            ws.deliver = flow.frame_received
        await ws.prepare(request)
        transport.register_flow(flow)
        if on_flow_open is not None:
            on_flow_open(flow)
        log.debug("%s open from %s", flow.id, flow.remote)
        if keepalive is not None:
            keepalive.add(flow)
        if guard is not None:
            guard.await_authentication(flow)
        try:
            await _pump(ws, flow, policy.idle_timeout, keepalive)
        finally:
            if keepalive is not None:
                keepalive.discard(flow)
            transport.unregister_flow(flow)
            log.debug("%s closed (%s)", flow.id, ws.close_code)
        return ws

    return handle


# A connection that says nothing at all after opening is closed much sooner than an idle one.
FIRST_MESSAGE_TIMEOUT = 30.0


async def _pump(
    ws: web.WebSocketResponse, flow: WebSocketFlow, idle_timeout: float,
    keepalive: WebSocketKeepalive | None,
) -> None:
    """Close, error and control frames; SIP frames too unless aiohttp's parser delivers them."""
    opened = flow.last_activity
    timeout: float | None = min(FIRST_MESSAGE_TIMEOUT, idle_timeout)
    while True:
        try:
            message = await ws.receive(timeout=timeout)
        except TimeoutError:
            if flow.last_activity != opened:
                # SIP arrived straight from the parser. From the first message on, idleness is
                # the transport's idle sweeper's job: a timeout per receive costs a timer handle.
                timeout = None
                continue
            log.info("%s idle for too long; closing", flow.id)
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"idle timeout")
            return
        if message.type == WSMsgType.TEXT or message.type == WSMsgType.BINARY:
            timeout = None
            flow.frame_received(message.data, message.type == WSMsgType.TEXT)
        elif message.type == WSMsgType.PING:
            with contextlib.suppress(ConnectionError):  # the peer left meanwhile: CLOSED is next
                await ws.pong(message.data)
        elif message.type == WSMsgType.PONG:
            if keepalive is not None:
                keepalive.pong_received(flow)
        elif message.type == WSMsgType.ERROR:
            log.info("%s error: %s", flow.id, ws.exception())
            return
        else:  # CLOSE, CLOSING, CLOSED
            if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                log.warning("%s closed: message over %s bytes", flow.id, ws._max_msg_size)
            return
