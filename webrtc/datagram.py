"""The relay's UDP sockets: read with loop.add_reader and offered to aioice and the legs as the
small part of asyncio's DatagramTransport they use.

Written here rather than using the event loop's own UDP transport because that one costs a
relay as much per packet as its SRTP: for every datagram uvloop reads once more until EAGAIN
(a second system call; each socket of a call gets one packet per 20 ms), formats the source
address as text even where nobody needs it, and for every sendto looks the destination up in
a process-wide cache of 2048 addresses, which a thousand calls' peers outgrow.

So a ready socket is read once: epoll is level triggered and reports a socket with more
datagrams waiting again. That costs a readiness event per datagram, which is cheaper than an
EAGAIN per datagram only while the sockets' queues are short. When the loop falls behind, the
queues grow, and reading each ready socket until EAGAIN is what lets the relay catch up again
(LoopLag decides). Compiled by mypyc (setup.py).

Where the C relay path (webrtc/_relaypath.c) is built, a socket's reader is its RelayPump
instead of _readable, served through the relay's SocketPoller (one epoll set: one loop
dispatch for all ready sockets; WS2SIP_RELAY_POLLER=0 leaves it out): the pump reads the same
way (one datagram per readiness, drained while behind) and hands the datagrams it does not
relay itself to the same handlers. WS2SIP_RELAY_PUMP=0 in the environment leaves it out.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._relaypath import RelayPump

Address = tuple[Any, ...]  # (host, port) or, for IPv6, (host, port, flowinfo, scope_id)
PacketHandler = Callable[[bytes], None]
_MAX_DATAGRAM = 2048  # RTP over UDP stays under the path MTU; a larger one arrives truncated
_DRAIN_LIMIT = 32  # datagrams read per readiness while behind: other sockets wait meanwhile
_LAG_CHECK_SECONDS = 0.05
# A timer this late means loop iterations take this long: hundreds of ready sockets each.
_BEHIND_SECONDS = 0.005


def _relay_pump_type() -> Any:
    """The C relay path's RelayPump, or None where it is not built or switched off."""
    if os.environ.get("WS2SIP_RELAY_PUMP") == "0":
        return None
    try:
        return importlib.import_module("webrtc._relaypath").RelayPump
    except ImportError:  # WS2SIP_PURE_PYTHON=1 or no C compiler at install
        return None


_RELAY_PUMP: Any = _relay_pump_type()


def _relay_poller_type() -> Any:
    """The C relay path's RelayPoller, where pumps exist and WS2SIP_RELAY_POLLER is not 0."""
    if _RELAY_PUMP is None or os.environ.get("WS2SIP_RELAY_POLLER") == "0":
        return None
    return importlib.import_module("webrtc._relaypath").RelayPoller


_RELAY_POLLER: Any = _relay_poller_type()


# What a closed socket's protocol slot holds: nothing more is delivered after connection_lost.
_CLOSED_PROTOCOL: Final = asyncio.DatagramProtocol()

class LoopLag:
    """Whether the event loop runs behind, from how late a periodic timer fires. It runs
    while sockets use it."""

    def __init__(self) -> None:
        self.behind = False
        self._users = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._users += 1
        if self._timer is None:
            self._arm(loop)

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.behind = False

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + _LAG_CHECK_SECONDS
        self._timer = loop.call_at(self._due, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.behind = loop.time() - self._due > _BEHIND_SECONDS
        self._arm(loop)


class SocketPoller:
    """The one reader the event loop has for a relay's sockets, where the C relay path is built:
    a RelayPoller's epoll set holds the sockets' pumps, and one readiness of it serves all
    ready sockets in one C call instead of one loop dispatch per socket. Registered with the
    loop while sockets use it; where there is no RelayPoller, sockets are the loop's readers."""

    def __init__(self, lag: LoopLag) -> None:
        self._lag = lag
        self._poller: Any = None
        self._users = 0

    @property
    def available(self) -> bool:
        return _RELAY_POLLER is not None

    def add(self, loop: asyncio.AbstractEventLoop, pump: RelayPump) -> None:
        if self._poller is None:
            self._poller = _RELAY_POLLER(self._lag)
            loop.add_reader(self._poller.fileno(), self._poller)
        self._poller.add(pump)
        self._users += 1

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        """A socket's pump closed (and so left the epoll set)."""
        self._users -= 1
        if self._users == 0:
            loop.remove_reader(self._poller.fileno())
            self._poller.close()
            self._poller = None


class DatagramSocket:
    """A bound, non-blocking UDP socket serving one asyncio DatagramProtocol.

    Datagrams go to the protocol's datagram_received with their source address, or, while
    `on_packet` is set, to `on_packet` without it (no address to build for the packets of a
    latched call). While `source` is set too, only datagrams from that address take on_packet
    (and the C relay path); the others go to datagram_received with their address, so that a
    latched leg decides about them (strict source: nobody else's packets get relayed). A full
    send buffer drops the datagram instead of queueing it: real-time media would arrive too
    late, and STUN and DTLS retransmit.

    `pump`, where the C relay path exists, is the socket's reader (through `poller` when given
    and available); webrtc.relay_pumps configures it to relay a call's packets itself.
    """

    def __init__(
        self, sock: socket.socket, protocol: asyncio.DatagramProtocol, lag: LoopLag,
        poller: SocketPoller | None = None,
    ) -> None:
        self._sock = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._lag = lag
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._on_packet: PacketHandler | None = None
        self._source: Address | None = None
        self._source_packets = 0
        protocol.connection_made(self)  # type: ignore[arg-type]  # the part aioice uses
        lag.acquire(self._loop)
        self.pump: RelayPump | None = None
        self._poller: SocketPoller | None = None
        if _RELAY_PUMP is not None:
            self.pump = _RELAY_PUMP(
                self._fileno, lag, protocol.datagram_received, protocol.error_received)
            if poller is not None and poller.available:
                poller.add(self._loop, self.pump)
                self._poller = poller
            else:
                self._loop.add_reader(self._fileno, self.pump)
        else:
            self._loop.add_reader(self._fileno, self._readable)

    @property
    def on_packet(self) -> PacketHandler | None:
        return self._on_packet

    @on_packet.setter
    def on_packet(self, handler: PacketHandler | None) -> None:
        self._on_packet = handler
        if self.pump is not None:
            self.pump.on_packet = handler

    @property
    def source(self) -> Address | None:
        return self._source

    @source.setter
    def source(self, address: Address | None) -> None:
        self._source = address
        if self.pump is not None:
            self.pump.source = address

    @property
    def source_packets(self) -> int:
        """Datagrams from `source` taken so far, by either path: moves while it is alive."""
        if self.pump is not None:
            return self.pump.source_packets
        return self._source_packets

    def _readable(self) -> None:
        if not self._lag.behind:
            self._read()
            return
        for _ in range(_DRAIN_LIMIT):
            if not self._read() or self._closing:
                return

    def _read(self) -> bool:
        """Reads and hands on one datagram; False when none was waiting."""
        on_packet = self._on_packet
        expected = self._source
        try:
            if on_packet is not None and expected is None:
                packet = self._sock.recv(_MAX_DATAGRAM)
                source: Address = ()  # not read: on_packet takes every datagram
            else:
                packet, source = self._sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # e.g. ICMP port unreachable reported on a later read
            self._protocol.error_received(exc)
            return True
        if on_packet is not None and (expected is None or (
                source[1] == expected[1] and source[0] == expected[0])):
            if expected is not None:
                self._source_packets += 1
            on_packet(packet)
        else:
            self._protocol.datagram_received(packet, source)
        return True

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading now; close the socket and tell the protocol on the next loop turn, as
        asyncio's transports do (aioice waits for connection_lost)."""
        if self._closing:
            return
        self._closing = True
        if self._poller is None:
            self._loop.remove_reader(self._fileno)
        if self.pump is not None:
            self.pump.close()  # leaves the poller's epoll set while the fd is still open
        if self._poller is not None:
            self._poller.release(self._loop)
        self._lag.release()
        self._loop.call_soon(self._closed)

    def abort(self) -> None:
        self.close()

    def _closed(self) -> None:
        self._sock.close()
        self._protocol.connection_lost(None)
        # The protocol holds this transport: let go of it, as asyncio's transports do, so that
        # reference counting frees both rather than the rare full collection.
        self._protocol = _CLOSED_PROTOCOL
