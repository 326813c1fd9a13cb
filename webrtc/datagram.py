"""The relay's UDP sockets: read with loop.add_reader, one datagram per readiness, and offered
to aioice and the legs as the small part of asyncio's DatagramTransport they use.

Written here rather than using the event loop's own UDP transport because that one costs a
relay as much per packet as its SRTP: for every datagram uvloop reads once more until EAGAIN
(a second system call; each socket of a call gets one packet per 20 ms), formats the source
address as text even where nobody needs it, and for every sendto looks the destination up in
a process-wide cache of 2048 addresses, which a thousand calls' peers outgrow. Epoll is level
triggered, so a socket with more datagrams waiting is simply reported ready again. Compiled by
mypyc (setup.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

Address = tuple[Any, ...]  # (host, port) or, for IPv6, (host, port, flowinfo, scope_id)
PacketHandler = Callable[[bytes], None]
_MAX_DATAGRAM = 2048  # RTP over UDP stays under the path MTU; a larger one arrives truncated


class DatagramSocket:
    """A bound, non-blocking UDP socket serving one asyncio DatagramProtocol.

    Datagrams go to the protocol's datagram_received with their source address, or, while
    `on_packet` is set, to `on_packet` without it (no address to build for the packets of a
    latched call). A full send buffer drops the datagram instead of queueing it: real-time
    media would arrive too late, and STUN and DTLS retransmit.
    """

    def __init__(self, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        self._sock = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self.on_packet: PacketHandler | None = None
        protocol.connection_made(self)  # type: ignore[arg-type]  # the part aioice uses
        self._loop.add_reader(self._fileno, self._readable)

    def _readable(self) -> None:
        on_packet = self.on_packet
        try:
            if on_packet is not None:
                packet = self._sock.recv(_MAX_DATAGRAM)
            else:
                packet, source = self._sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ICMP port unreachable reported on a later read
            self._protocol.error_received(exc)
            return
        if on_packet is not None:
            on_packet(packet)
        else:
            self._protocol.datagram_received(packet, source)

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
        self._loop.remove_reader(self._fileno)
        self._loop.call_soon(self._closed)

    def abort(self) -> None:
        self.close()

    def _closed(self) -> None:
        self._sock.close()
        self._protocol.connection_lost(None)
