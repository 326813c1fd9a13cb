"""The plain leg: RTP on an even port, RTCP on the next one, symmetric latching."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from .datagram import Address as SocketAddress
from .datagram import DatagramSocket, PacketHandler
from .ports import PortPool

if TYPE_CHECKING:
    from ._relaypath import RelayPump

Address = tuple[str, int]


class _Socket(asyncio.DatagramProtocol):
    """Hands datagrams with their source to the leg, which latches onto it."""

    def __init__(self, on_datagram: Callable[[bytes, SocketAddress], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: SocketAddress) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the phone is not yet listening: keep going.
        pass


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 section 4: RTCP packet types 192-223 occupy the RTP marker+PT byte."""
    return len(packet) > 1 and 192 <= packet[1] <= 223


class PlainLeg:
    """RTP/RTCP sockets towards a SIP phone or PBX.

    Until the first packet arrives, media goes to the address in the peer's SDP; after that,
    to wherever the peer's packets actually come from (symmetric RTP, RFC 4961), which is what
    gets media through NATs in front of phones. A new SDP address re-arms the latch.

    `on_change` is called whenever latching, targets, handlers or sockets change: the C relay
    path (webrtc.relay_pumps) is reconfigured from it.
    """

    def __init__(self, pool: PortPool) -> None:
        self._pool = pool
        self._rtp: DatagramSocket | None = None
        self._rtcp: DatagramSocket | None = None
        self._on_rtp: PacketHandler = _ignore
        self._on_rtcp: PacketHandler = _ignore
        self._rtp_target: Address | None = None
        self._rtcp_target: Address | None = None
        self._rtp_latched = False
        self._rtcp_latched = False
        self.rtcp_mux = False
        self.on_change: Callable[[], None] = _nothing

    async def open(self) -> None:
        self._rtp, self._rtcp = self._pool.bind_pair(lambda: _Socket(self._rtp_received),
                                                     lambda: _Socket(self._rtcp_received))

    @property
    def on_rtp(self) -> PacketHandler:
        return self._on_rtp

    @on_rtp.setter
    def on_rtp(self, handler: PacketHandler) -> None:
        self._on_rtp = handler
        self._bypass()

    @property
    def on_rtcp(self) -> PacketHandler:
        return self._on_rtcp

    @on_rtcp.setter
    def on_rtcp(self, handler: PacketHandler) -> None:
        self._on_rtcp = handler
        self._bypass()

    def _bypass(self) -> None:
        """Once latched, the sockets hand packets straight to the handlers, without reading
        the source address (one call level and an address conversion fewer per packet); a
        muxed RTP port still needs the latching handler to tell RTCP from RTP."""
        if self._rtp is not None:
            direct = self._rtp_latched and not self.rtcp_mux
            self._rtp.on_packet = self._on_rtp if direct else None
        if self._rtcp is not None:
            self._rtcp.on_packet = self._on_rtcp if self._rtcp_latched else None
        self.on_change()

    @property
    def port(self) -> int:
        assert self._rtp is not None, "plain leg not opened"
        return int(self._rtp.get_extra_info("sockname")[1])

    @property
    def rtp_target(self) -> Address | None:
        return self._rtp_target

    @property
    def rtp_latched(self) -> bool:
        return self._rtp_latched

    @property
    def rtp_pump(self) -> RelayPump | None:
        """The RTP socket's C relay pump, if it has one and is open."""
        return self._rtp.pump if self._rtp is not None else None

    def set_remote(self, host: str, port: int, rtcp_port: int | None, rtcp_mux: bool) -> None:
        if port == 0:
            self._rtp_target = self._rtcp_target = None
            self.on_change()
            return
        new_target = (host, port)
        if new_target != self._rtp_target:
            self._rtp_latched = self._rtcp_latched = False
        self.rtcp_mux = rtcp_mux
        if _is_ip_address(host):
            self._rtp_target = new_target
            self._rtcp_target = new_target if rtcp_mux else (host, rtcp_port or port + 1)
        else:
            # A host name would cost a blocking DNS lookup for every packet sent: nothing goes
            # out until the peer's first packets show its address (latching).
            self._rtp_target = self._rtcp_target = None
        self._bypass()

    def send_rtp(self, packet: bytes) -> None:
        if self._rtp_target is not None and self._rtp is not None:
            self._rtp.sendto(packet, self._rtp_target)

    def send_rtcp(self, packet: bytes) -> None:
        if self._rtcp_target is None:
            return
        transport = self._rtp if self.rtcp_mux else self._rtcp
        if transport is not None:
            transport.sendto(packet, self._rtcp_target)

    def close(self) -> None:
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                self._pool.release(transport)
        self._rtp = self._rtcp = None
        self.on_change()

    def _rtp_received(self, data: bytes, addr: SocketAddress) -> None:
        if not self._rtp_latched:
            self._rtp_latched = True
            self._rtp_target = (addr[0], addr[1])
            if self.rtcp_mux:
                self._rtcp_target = self._rtp_target
            self._bypass()
        if self.rtcp_mux and is_rtcp(data):
            self._on_rtcp(data)
        else:
            self._on_rtp(data)

    def _rtcp_received(self, data: bytes, addr: SocketAddress) -> None:
        if not self._rtcp_latched:
            self._rtcp_latched = True
            self._rtcp_target = (addr[0], addr[1])
            self._bypass()
        self._on_rtcp(data)


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ignore(_: bytes) -> None:
    pass


def _nothing() -> None:
    pass
