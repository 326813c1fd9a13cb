"""UDP port allocation inside the relay's configured range, with bookkeeping of open ports."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterator

from .datagram import DatagramSocket, LoopLag, SocketPoller
from .errors import MediaError

ProtocolFactory = Callable[[], asyncio.DatagramProtocol]
_RANDOM_PROBES = 16  # random draws before the exhaustive pass


class PortPool:
    """Binds UDP sockets on even/odd ports of [port_min, port_max] and remembers which are open.

    Ports are drawn at random (from the OS's CSPRNG): a relay port handed out in order is easy
    to guess, and whoever guesses it can send media to it before the phone does (RTP bleed; the
    plain leg's latching is the other half of the defence). A few random probes find a free
    pair while the range is far from full; after them one pass over every pair from a random
    start, so a nearly full range still finds its last free pair and the search is bounded. A
    port the OS refuses (taken by someone else) is skipped.
    """

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        if port_min < 1024 or port_max > 65535 or port_max - port_min < 3:
            raise ValueError(f"invalid media port range {port_min}-{port_max}")
        self.host = host
        first_even = port_min + (port_min % 2)
        self._even_ports = range(first_even, port_max, 2)
        self._random = random.SystemRandom()
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
        for port in self._candidates():
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
        for port in self._candidates():
            for candidate in (port, port + 1):
                if candidate in self._open:
                    continue
                transport = self._try_bind(candidate, factory)
                if transport is not None:
                    return transport
        raise MediaError(status=503, reason=f"no free ICE port on {self.host}")

    def _candidates(self) -> Iterator[int]:
        """Even ports to try: _RANDOM_PROBES random ones, then each one once from a random
        start (a port may come twice; the callers skip the ones they hold)."""
        even_ports = self._even_ports
        count = len(even_ports)
        for _ in range(min(_RANDOM_PROBES, count)):
            yield even_ports[self._random.randrange(count)]
        start = self._random.randrange(count)
        for offset in range(count):
            yield even_ports[(start + offset) % count]

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
