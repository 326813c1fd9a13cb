"""UDP port allocation inside the relay's configured range, with bookkeeping of open ports."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable

from .datagram import DatagramSocket, LoopLag, SocketPoller
from .errors import MediaError

ProtocolFactory = Callable[[], asyncio.DatagramProtocol]


class PortPool:
    """Binds UDP sockets on even/odd ports of [port_min, port_max] and remembers which are open.

    Ports are probed round-robin from a moving start so consecutive calls and concurrent
    gateway processes rarely collide; a port the OS refuses (taken by someone else) is skipped.
    """

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        if port_min < 1024 or port_max > 65535 or port_max - port_min < 3:
            raise ValueError(f"invalid media port range {port_min}-{port_max}")
        self.host = host
        first_even = port_min + (port_min % 2)
        self._even_ports = range(first_even, port_max, 2)
        self._cursor = itertools.cycle(range(len(self._even_ports)))
        self._open: set[int] = set()
        self._lag = LoopLag()
        self._poller = SocketPoller(self._lag)

    @property
    def open_ports(self) -> frozenset[int]:
        return frozenset(self._open)

    def bind_pair(
        self, rtp_factory: ProtocolFactory, rtcp_factory: ProtocolFactory
    ) -> tuple[DatagramSocket, DatagramSocket]:
        """An even RTP port and RTP+1 for RTCP, both bound, as RFC 3550 recommends."""
        for _ in range(len(self._even_ports)):
            port = self._even_ports[next(self._cursor)]
            if port in self._open or port + 1 in self._open:
                continue
            rtp = self._try_bind(port, rtp_factory)
            if rtp is None:
                continue
            rtcp = self._try_bind(port + 1, rtcp_factory)
            if rtcp is None:
                self.release(rtp)
                continue
            return rtp, rtcp
        raise MediaError(status=503, reason=f"no free RTP port pair on {self.host}")

    def bind_single(self, factory: ProtocolFactory) -> DatagramSocket:
        """One port (ICE uses a single muxed port), also from the configured range."""
        for _ in range(len(self._even_ports)):
            port = self._even_ports[next(self._cursor)]
            for candidate in (port, port + 1):
                if candidate in self._open:
                    continue
                transport = self._try_bind(candidate, factory)
                if transport is not None:
                    return transport
        raise MediaError(status=503, reason=f"no free ICE port on {self.host}")

    def release(self, transport: DatagramSocket) -> None:
        sockname = transport.get_extra_info("sockname")
        transport.close()
        if sockname is not None:
            self._open.discard(sockname[1])

    def forget(self, port: int) -> None:
        """A socket bound here was closed by its owner (aioice closes its own sockets)."""
        self._open.discard(port)

    def _try_bind(self, port: int, factory: ProtocolFactory) -> DatagramSocket | None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self._open.add(port)
        return DatagramSocket(sock, factory(), self._lag, self._poller)
