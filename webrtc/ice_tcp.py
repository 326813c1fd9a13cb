"""ICE-TCP on the WebRTC leg: one TCP listener per gateway, passive host candidates (RFC 6544)
carrying STUN, DTLS and SRTP in RFC 4571 frames (a 16-bit length, then the packet).

For browsers on networks that block UDP but let them open a TCP connection to the gateway
(port 443 behind a TCP port forward, say): no TURN server is needed then. aioice parses TCP
candidates but has no TCP transport, so each accepted connection becomes one more of the ICE
connection's "sockets": a MediaFirstProtocol (webrtc.ice_media) whose transport frames what it
is given. aioice then answers the browser's checks on it, learns the browser's address as a
peer-reflexive candidate, runs its triggered check, nomination and consent freshness over it
as over UDP, and media goes out through the nominated pair as usual (in Python: the C relay
path serves UDP sockets only).

Connections arrive on one port for every call: each is held unauthenticated until its first
frame, which must be a STUN binding request whose USERNAME starts with the local ufrag of a live
ICE connection and whose MESSAGE-INTEGRITY verifies with that connection's password. Anything
else (no frame within AUTH_TIMEOUT_SECONDS, a frame longer than MAX_FRAME_BYTES, not STUN, an
unknown ufrag, a bad integrity) closes the connection; so do connections past
MAX_PENDING_CONNECTIONS waiting to authenticate at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from typing import Any, Protocol, cast

from aioice import stun

from .datagram import Address

log = logging.getLogger(f"ws2sip.{__name__}")

_LENGTH = struct.Struct("!H")
# A frame holds one packet of the UDP path (RTP, RTCP, DTLS record, STUN): those stay under the
# path MTU (webrtc.datagram reads at most 2048 bytes). A longer length is a hostile or broken
# peer, not media.
MAX_FRAME_BYTES = 2048
AUTH_TIMEOUT_SECONDS = 5.0
MAX_PENDING_CONNECTIONS = 64
# Connections one ICE connection accepts: a browser opens one per local TCP candidate.
MAX_CONNECTIONS_PER_ICE = 8
# Frames queued toward a slow or stalled reader: beyond this a frame is dropped rather than
# buffered (real-time media would arrive too late anyway; STUN and DTLS retransmit).
WRITE_BUFFER_LIMIT = 64 * 1024

# RFC 6544 section 4.2: priority = 2^24 type preference + 2^8 local preference + (256 -
# component), local preference = 2^13 direction preference + other preference. The type
# preference sits below a UDP host candidate's 126 and a server reflexive one's 100 (as in
# libwebrtc), so that a browser that reaches the gateway over UDP keeps using UDP.
TCP_HOST_TYPE_PREFERENCE = 90
PASSIVE_DIRECTION_PREFERENCE = 4  # RFC 6544: active 6, passive 4, simultaneous-open 2
_OTHER_PREFERENCE = 8191
_UFRAG_BYTES = 9  # 12 ice-chars (RFC 8839: ALPHA / DIGIT / "+" / "/")


def tcp_candidate_priority(component: int) -> int:
    """The priority of the gateway's passive TCP host candidate for `component`."""
    local_preference = (PASSIVE_DIRECTION_PREFERENCE << 13) + _OTHER_PREFERENCE
    return (TCP_HOST_TYPE_PREFERENCE << 24) + (local_preference << 8) + (256 - component)


class FramingError(ValueError):
    """The peer broke RFC 4571 framing: its connection is closed."""


def frame(packet: bytes) -> bytes:
    """One RFC 4571 frame."""
    return _LENGTH.pack(len(packet)) + packet


class FrameReader:
    """Splits a TCP byte stream into RFC 4571 frames. Holds at most one incomplete frame
    (MAX_FRAME_BYTES + 2 bytes) plus whatever one read brought."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames `data` completes; FramingError for a length over the maximum. Empty
        frames (RFC 4571 allows them) are skipped."""
        if self._buffer:  # the rare case: a frame split across reads
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        frames: list[bytes] = []
        offset = 0
        end = len(data)
        while end - offset >= 2:
            length = (data[offset] << 8) | data[offset + 1]
            if length > self._max_frame:
                raise FramingError(f"RFC 4571 frame of {length} bytes (at most "
                                   f"{self._max_frame})")
            if end - offset - 2 < length:
                break
            if length:
                frames.append(data[offset + 2:offset + 2 + length])
            offset += 2 + length
        if offset < end:
            self._buffer += data[offset:]
        return frames


class TcpIceTarget(Protocol):
    """What the listener hands an authenticated connection to (webrtc.ice.IceConnection)."""

    @property
    def local_password(self) -> str: ...

    def accept_tcp(self, stream: IceTcpStream) -> TcpPacketReceiver | None:
        """The receiver of the stream's packets, or None to refuse the stream."""


class TcpPacketReceiver(Protocol):
    """An aioice StunProtocol's share of the stream: packets in, the end of the stream."""

    def datagram_received(self, data: bytes | str, addr: Address) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class IceTcpStream(asyncio.Protocol):
    """One accepted TCP connection: unauthenticated until its first frame, then the framed
    transport of one ICE connection's protocol (the part of asyncio's DatagramTransport that
    aioice and webrtc.ice_media use: sendto, close, is_closing, get_extra_info)."""

    def __init__(self, listener: IceTcpListener, refusal: str | None = None) -> None:
        self._listener: IceTcpListener | None = listener
        self._refusal = refusal  # why the listener turns the connection away at once
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._receiver: TcpPacketReceiver | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer: Address = ()
        self.dropped_frames = 0

    # -- asyncio.Protocol: the TCP side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has asyncio.Transport's methods but is not its subclass.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else ("", 0)
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        self._timer = asyncio.get_running_loop().call_later(
            AUTH_TIMEOUT_SECONDS, self._refuse, "no valid STUN check in time")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FramingError as error:
            self._refuse(str(error))
            return
        for packet in frames:
            receiver = self._receiver
            if receiver is None:
                receiver = self._authenticate(packet)
                if receiver is None:
                    return
            receiver.datagram_received(packet, self.peer)

    def eof_received(self) -> bool:
        return False  # close: the peer is done sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.pending_done(self)
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.connection_lost(exc)

    # -- what aioice sees as the protocol's transport ----------------------------------------

    def sendto(self, data: bytes, addr: Address | None = None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.dropped_frames += 1
            return
        transport.write(_LENGTH.pack(len(data)) + data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    # -- authentication ----------------------------------------------------------------------

    def _authenticate(self, packet: bytes) -> TcpPacketReceiver | None:
        """The receiver for the connection whose first frame is `packet`, or None (and the
        connection closed) when that frame is not a valid check for a live ICE connection."""
        listener = self._listener
        if listener is None:
            return None
        target = None
        reason = "first frame not a STUN binding request with USERNAME and MESSAGE-INTEGRITY"
        if packet[0] < 4:
            try:
                message = stun.parse_message(packet)
            except ValueError:
                message = None
            if (message is not None and message.message_method == stun.Method.BINDING
                    and message.message_class == stun.Class.REQUEST
                    and "USERNAME" in message.attributes
                    and "MESSAGE-INTEGRITY" in message.attributes):
                ufrag = str(message.attributes["USERNAME"]).split(":", 1)[0]
                target = listener.target(ufrag)
                reason = "STUN check for an unknown ICE username"
                if target is not None and not message.check_message_integrity(
                        target.local_password.encode()):
                    target, reason = None, "STUN check with a wrong MESSAGE-INTEGRITY"
        receiver = target.accept_tcp(self) if target is not None else None
        if receiver is None:
            self._refuse(reason if target is None else "ICE connection takes no more streams")
            return None
        self._stop_timer()
        self._listener = None
        listener.pending_done(self)
        self._receiver = receiver
        return receiver

    def _refuse(self, reason: str) -> None:
        log.debug("ICE-TCP connection from %s closed: %s", self.peer, reason)
        if self._listener is not None:
            self._listener.refused += 1
        self._stop_timer()
        if self._transport is not None:
            self._transport.abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class IceTcpListener:
    """The gateway's one ICE-TCP port: routes each new connection to the ICE connection whose
    local ufrag its first STUN check names.

    `advertised_port` is the port put into the candidates (0: the bound one), for a port forward
    or a TCP proxy in front of the gateway (443 outside, the listener's port inside).
    """

    def __init__(self, host: str, port: int, advertised_port: int = 0,
                 max_pending: int = MAX_PENDING_CONNECTIONS) -> None:
        self.host = host
        self.port = port
        self._advertised_port = advertised_port
        self._max_pending = max_pending
        self._server: asyncio.Server | None = None
        self._targets: dict[str, TcpIceTarget] = {}
        self._pending: set[IceTcpStream] = set()
        self.refused = 0  # connections closed before authenticating (hostile, stale, excess)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._accepted, self.host, self.port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        self.port = bound[1]
        log.info("ICE-TCP on %s:%d (announced port %d)", self.host, self.port,
                 self.advertised_port)

    @property
    def advertised_port(self) -> int:
        return self._advertised_port or self.port

    @property
    def pending_connections(self) -> int:
        return len(self._pending)

    def new_ufrag(self) -> str:
        """A local ufrag no live ICE connection uses: the key the listener routes by. aioice's
        own are 4 characters, which a few thousand calls at once would share now and then."""
        while True:
            ufrag = secrets.token_urlsafe(_UFRAG_BYTES).replace("-", "+").replace("_", "/")
            if ufrag not in self._targets:
                return ufrag

    def register(self, ufrag: str, target: TcpIceTarget) -> None:
        self._targets[ufrag] = target

    def unregister(self, ufrag: str) -> None:
        self._targets.pop(ufrag, None)

    def target(self, ufrag: str) -> TcpIceTarget | None:
        return self._targets.get(ufrag)

    def pending_done(self, stream: IceTcpStream) -> None:
        self._pending.discard(stream)

    def _accepted(self) -> IceTcpStream:
        if len(self._pending) >= self._max_pending:
            return IceTcpStream(self, "too many unauthenticated ICE-TCP connections")
        stream = IceTcpStream(self)
        self._pending.add(stream)
        return stream

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for stream in list(self._pending):
                stream.abort()
            # Streams handed to ICE connections close with them, not here: do not wait for them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        self._targets.clear()

