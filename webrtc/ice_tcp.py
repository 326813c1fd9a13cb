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
MAX_PENDING_CONNECTIONS waiting to authenticate at once (MAX_PENDING_PER_ADDRESS from one
address).

With media worker processes (webrtc.workers) the listener stays in the gateway process and
each worker's ufrags start with its two-digit index: the listener reads the first check, hands
the connection (its descriptor and the bytes read so far, over an AF_UNIX socket, SCM_RIGHTS)
to the worker the ufrag names, and that worker's registry-only listener authenticates it as
above (only the worker knows the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
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
# ...of which one address may hold: a single host cannot take every slot from the others.
MAX_PENDING_PER_ADDRESS = 8
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
WORKER_PREFIX_LENGTH = 2  # a media worker's index, leading its ufrags
# Bytes an unauthenticated connection may send before its first check is complete: the check
# fits in one frame, and a browser waits for its answer before sending anything else.
_MAX_UNAUTHENTICATED_BYTES = 4 * MAX_FRAME_BYTES
_HANDOFF_MESSAGE_BYTES = _MAX_UNAUTHENTICATED_BYTES + 1024
# Hands a connection (its descriptor, the bytes read from it) to a worker; False if it cannot.
Handoff = Callable[[int, bytes], bool]


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

    def __init__(self, listener: IceTcpListener, refusal: str | None = None,
                 received: bytes = b"") -> None:
        self._listener: IceTcpListener | None = listener
        self._refusal = refusal  # why the listener turns the connection away at once
        self._received = bytearray(received)  # raw bytes until authenticated (for a handoff)
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
        if self._refusal is None and self._listener is not None and (
                self._listener.pending_from(self.peer[0]) > self._listener.max_pending_per_address):
            self._refusal = "too many unauthenticated ICE-TCP connections from its address"
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        self._timer = asyncio.get_running_loop().call_later(
            AUTH_TIMEOUT_SECONDS, self._refuse, "no valid STUN check in time")
        if self._received:  # what the gateway process read before handing the connection over
            received, self._received = bytes(self._received), bytearray()
            self.data_received(received)

    def data_received(self, data: bytes) -> None:
        if self._receiver is None and self._listener is not None:
            if self._listener.hands_over:
                self._received += data
            if len(self._received) > _MAX_UNAUTHENTICATED_BYTES:
                self._refuse("too many bytes before a STUN check")
                return
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
        self._transport = None  # asyncio's transport and this protocol refer to each other
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
                if listener.hands_over:
                    self._hand_over(listener, ufrag)
                    return None
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

    def _hand_over(self, listener: IceTcpListener, ufrag: str) -> None:
        """Gives the connection to the media worker that `ufrag` names, or closes it."""
        handoff = listener.handoff_for(ufrag)
        transport = self._transport
        if handoff is None or transport is None:
            self._refuse("STUN check for an unknown ICE username")
            return
        transport.pause_reading()  # what arrives from now on is the worker's to read
        sock = transport.get_extra_info("socket")
        if not handoff(sock.fileno(), bytes(self._received)):
            self._refuse("its media worker does not take it")
            return
        self._stop_timer()
        self._listener = None
        listener.pending_done(self)
        # Only this process's descriptor closes: the worker holds its own copy, so the
        # connection stays open (close() without shutdown() sends no FIN while a copy lives).
        transport.abort()

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
                 max_pending: int = MAX_PENDING_CONNECTIONS,
                 max_pending_per_address: int = MAX_PENDING_PER_ADDRESS, ufrag_prefix: str = "",
                 handoffs: Callable[[str], Handoff | None] | None = None) -> None:
        """ufrag_prefix: what this process's ufrags start with (a media worker's index).
        handoffs: in the gateway process of media workers, the handoff to the worker a ufrag
        names (None: no such worker); connections are then handed over, not served here."""
        self.host = host
        self.port = port
        self._advertised_port = advertised_port
        self._max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self._ufrag_prefix = ufrag_prefix
        self._handoffs = handoffs
        self._handoff_channel: socket.socket | None = None
        self._adoptions: set[asyncio.Task[Any]] = set()
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
            ufrag = self._ufrag_prefix + secrets.token_urlsafe(_UFRAG_BYTES).replace(
                "-", "+").replace("_", "/")
            if ufrag not in self._targets:
                return ufrag

    @property
    def hands_over(self) -> bool:
        return self._handoffs is not None

    def handoff_for(self, ufrag: str) -> Handoff | None:
        return self._handoffs(ufrag) if self._handoffs is not None else None

    def serve_handoffs(self, channel: socket.socket) -> None:
        """In a media worker: adopt the connections the gateway process sends over `channel`
        (an AF_UNIX SOCK_SEQPACKET socket; see hand_over)."""
        channel.setblocking(False)
        self._handoff_channel = channel
        asyncio.get_running_loop().add_reader(channel.fileno(), self._handoff_ready)

    def _handoff_ready(self) -> None:
        channel = self._handoff_channel
        if channel is None:
            return
        try:
            received, fds, _, _ = socket.recv_fds(channel, _HANDOFF_MESSAGE_BYTES, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            log.warning("ICE-TCP handoff channel failed: %s", error)
            self._stop_handoffs()
            return
        if not fds:
            if not received:  # the gateway process is gone
                self._stop_handoffs()
            return
        sock = socket.socket(fileno=fds[0])
        for extra in fds[1:]:
            os.close(extra)
        if len(self._pending) >= self._max_pending:
            log.debug("ICE-TCP connection handed over closed: too many unauthenticated")
            self.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        stream = IceTcpStream(self, received=received)
        self._pending.add(stream)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: stream, sock))
        self._adoptions.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[Any]) -> None:
        self._adoptions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("ICE-TCP connection handed over unusable: %s", task.exception())

    def _stop_handoffs(self) -> None:
        channel, self._handoff_channel = self._handoff_channel, None
        if channel is not None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()

    def register(self, ufrag: str, target: TcpIceTarget) -> None:
        self._targets[ufrag] = target

    def unregister(self, ufrag: str) -> None:
        self._targets.pop(ufrag, None)

    def target(self, ufrag: str) -> TcpIceTarget | None:
        return self._targets.get(ufrag)

    def pending_from(self, host: str) -> int:
        """Connections from `host` waiting to authenticate (the one asking included)."""
        return sum(1 for stream in self._pending if stream.peer and stream.peer[0] == host)

    def pending_done(self, stream: IceTcpStream) -> None:
        self._pending.discard(stream)

    def _accepted(self) -> IceTcpStream:
        if len(self._pending) >= self._max_pending:
            return IceTcpStream(self, "too many unauthenticated ICE-TCP connections")
        stream = IceTcpStream(self)
        self._pending.add(stream)
        return stream

    async def close(self) -> None:
        self._stop_handoffs()
        for task in self._adoptions:
            task.cancel()
        for stream in list(self._pending):
            stream.abort()
        if self._server is not None:
            self._server.close()
            # Streams handed to ICE connections close with them, not here: do not wait for them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        self._targets.clear()


def hand_over(channel: socket.socket, fd: int, received: bytes) -> bool:
    """Sends a connection's descriptor (the receiver gets its own copy) and the bytes read from
    it to a media worker's serve_handoffs; False when the worker cannot take it now."""
    try:
        socket.send_fds(channel, [received], [fd])
    except OSError as error:  # a full channel (stalled worker) or a dead one
        log.debug("ICE-TCP connection not handed to its media worker: %s", error)
        return False
    return True

