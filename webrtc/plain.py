"""The plain leg: RTP on an even port, RTCP on the next one, strict symmetric latching."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .datagram import Address as SocketAddress
from .datagram import DatagramSocket, PacketHandler
from .forwarding import Forwarder
from .ports import PortPool

if TYPE_CHECKING:
    from ._relaypath import RelayPump

log = logging.getLogger(f"ws2sip.{__name__}")

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


_MAX_CANDIDATES = 16  # sources on probation at once


class _Candidate:
    """A source sending to a plain leg that has not latched it: its stream so far."""

    ssrc: int
    next_seq: int
    count: int  # packets in sequence
    since: float  # when the first of them came

    def __init__(self, ssrc: int, seq: int, now: float) -> None:
        self.restart(ssrc, seq, now)

    def restart(self, ssrc: int, seq: int, now: float) -> None:
        self.ssrc = ssrc
        self.next_seq = seq
        self.count = 1
        self.since = now


@dataclass(frozen=True)
class LatchPolicy:
    """Which source a plain leg takes its peer's media from (strict source).

    Packets from the address in the peer's SDP are always taken: that is what signalling says.
    A phone behind NAT sends from elsewhere, so another source is learned too, but only
    - once the peer's SDP is known (nothing is learned before),
    - within `learn_seconds` of the first packet that arrives after it,
    - from a stream of `probation_packets` RTP packets of one SSRC in sequence from one
      address, spanning at least `probation_seconds` (a burst sent just before the phone
      starts does not qualify; two sources interleaving reset each other's count), and
    - while the source latched so far has not been heard for `alive_seconds`.
    Everything else is dropped and counted. Compare Asterisk's strictrtp (learning by sequence
    numbers) and rtpengine's strict-source.
    """

    learn_seconds: float = 3.0
    probation_packets: int = 4
    probation_seconds: float = 0.2
    alive_seconds: float = 1.0


class PlainLeg:
    """RTP/RTCP sockets towards a SIP phone or PBX.

    Until a source is latched, media goes to the address in the peer's SDP; after that, to
    wherever the latched source's packets come from (symmetric RTP, RFC 4961), which is what
    gets media through NATs in front of phones. Only the latched source's packets are taken
    (the sockets and the C relay path filter on it); which source is latched is LatchPolicy's
    rule. A new SDP address re-arms the latch.

    `on_change` is called whenever latching, targets, handlers or sockets change: the C relay
    path (webrtc.relay_pumps) is reconfigured from it.
    """

    def __init__(self, pool: PortPool, policy: LatchPolicy | None = None) -> None:
        self._pool = pool
        self._policy = policy if policy is not None else LatchPolicy()
        self._rtp: DatagramSocket | None = None
        self._rtcp: DatagramSocket | None = None
        self._on_rtp: PacketHandler = _ignore
        self._on_rtcp: PacketHandler = _ignore
        self.rtcp_mux = False
        self.on_change: Callable[[], None] = _nothing
        # What the peer's SDP said (None: no SDP yet, port 0, or a host name).
        self._signalled: tuple[str, int] | None = None  # as written, to notice a change
        self._signalled_rtp: Address | None = None
        self._signalled_rtcp: Address | None = None
        self._sdp_known = False
        self._sending = True  # False while the SDP says port 0
        # What the leg latched onto: addresses as the socket reports them.
        self._rtp_source: SocketAddress | None = None
        self._rtcp_source: SocketAddress | None = None
        # Learning a source other than the SDP's.
        self._learning_ends: float | None = None  # set by the first packet after the SDP
        self._candidates: dict[SocketAddress, _Candidate] = {}
        self._source_packets = 0  # from the latched source through _rtp_received (rtcp-mux)
        self._source_seen_count = 0
        self._source_seen_at = 0.0
        self.foreign_packets = 0  # dropped: not from the latched or signalled source
        self._foreign_logged = False

    async def open(self) -> None:
        self._rtp, self._rtcp = self._pool.bind_pair(lambda: _Socket(self._rtp_received),
                                                     lambda: _Socket(self._rtcp_received))

    @property
    def on_rtp(self) -> PacketHandler:
        return self._on_rtp

    @on_rtp.setter
    def on_rtp(self, handler: PacketHandler) -> None:
        self._on_rtp = handler
        self._configure_sockets()

    @property
    def on_rtcp(self) -> PacketHandler:
        return self._on_rtcp

    @on_rtcp.setter
    def on_rtcp(self, handler: PacketHandler) -> None:
        self._on_rtcp = handler
        self._configure_sockets()

    def _configure_sockets(self) -> None:
        """Once latched, the sockets take only the latched source's packets and hand them
        straight to the handlers, without the source address (one call level and an address
        conversion fewer per packet); a muxed RTP port still needs the latching handler to
        tell RTCP from RTP. Packets from anywhere else come to the latching handlers."""
        if self._rtp is not None:
            self._rtp.source = self._rtp_source
            direct = self._rtp_source is not None and not self.rtcp_mux
            self._rtp.on_packet = self._on_rtp if direct else None
        if self._rtcp is not None:
            self._rtcp.source = self._rtcp_source
            self._rtcp.on_packet = self._on_rtcp if self._rtcp_source is not None else None
        self.on_change()

    @property
    def port(self) -> int:
        assert self._rtp is not None, "plain leg not opened"
        return int(self._rtp.get_extra_info("sockname")[1])

    @property
    def rtp_target(self) -> Address | None:
        if not self._sending:
            return None
        if self._rtp_source is not None:
            return (self._rtp_source[0], self._rtp_source[1])
        return self._signalled_rtp

    @property
    def rtcp_target(self) -> Address | None:
        if not self._sending:
            return None
        if self.rtcp_mux:
            return self.rtp_target
        if self._rtcp_source is not None:
            return (self._rtcp_source[0], self._rtcp_source[1])
        return self._signalled_rtcp

    @property
    def rtp_latched(self) -> bool:
        return self._rtp_source is not None

    @property
    def rtp_source(self) -> SocketAddress | None:
        """The address the leg takes RTP from, once latched."""
        return self._rtp_source

    @property
    def rtp_pump(self) -> RelayPump | None:
        """The RTP socket's C relay pump, if it has one and is open."""
        return self._rtp.pump if self._rtp is not None else None

    def set_remote(self, host: str, port: int, rtcp_port: int | None, rtcp_mux: bool) -> None:
        self._sending = port != 0
        if port == 0:
            self.on_change()
            return
        self._sdp_known = True
        self.rtcp_mux = rtcp_mux
        # A host name would cost a blocking DNS lookup for every packet sent: nothing goes out
        # until a source is learned.
        numeric = _ip_address(host) is not None
        self._signalled_rtp = (host, port) if numeric else None
        self._signalled_rtcp = (host, rtcp_port or port + 1) if numeric else None
        if (host, port) != self._signalled:
            # The peer moved (or first said where it is): learn afresh.
            self._signalled = (host, port)
            self._rtp_source = self._rtcp_source = None
            self._learning_ends = None
            self._candidates.clear()
            self._foreign_logged = False
        self._configure_sockets()

    def send_rtp(self, packet: bytes) -> None:
        target = self.rtp_target
        if target is not None and self._rtp is not None:
            self._rtp.sendto(packet, target)

    def send_rtcp(self, packet: bytes) -> None:
        target = self.rtcp_target
        if target is None:
            return
        transport = self._rtp if self.rtcp_mux else self._rtcp
        if transport is not None:
            transport.sendto(packet, target)

    def close(self) -> None:
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                self._pool.release(transport)
        self._rtp = self._rtcp = None
        self.on_change()
        # The handlers lead back to the session that holds this leg: let go of them so that
        # reference counting frees the ended call (full collections are rare in the gateway).
        self._on_rtp = self._on_rtcp = _ignore
        self.on_change = _nothing

    # -- latching --------------------------------------------------------------------------

    def _rtp_received(self, data: bytes, addr: SocketAddress) -> None:
        """Packets the RTP socket did not hand straight to on_rtp: before latching, from a
        source other than the latched one, and every packet of a muxed port."""
        source = self._rtp_source
        if source is not None and addr[0] == source[0] and addr[1] == source[1]:
            self._source_packets += 1
        elif self._may_latch_rtp(data, addr):
            self._rtp_source = addr
            self._candidates.clear()
            self._source_seen_at = time.monotonic()
            self._source_seen_count = self._heard_from_source()
            self._configure_sockets()
        else:
            self._drop_foreign(addr)
            return
        if self.rtcp_mux and is_rtcp(data):
            self._on_rtcp(data)
        else:
            self._on_rtp(data)

    def _may_latch_rtp(self, data: bytes, addr: SocketAddress) -> bool:
        if not self._sdp_known:
            return False  # where the peer is comes from its SDP: nothing before
        now = time.monotonic()
        if self._learning_ends is None:  # the call's first packet, whoever sent it
            self._learning_ends = now + self._policy.learn_seconds
        if _is_signalled(self._signalled_rtp, addr):
            return True
        if self.rtcp_mux and is_rtcp(data):
            return False  # only RTP shows a consistent stream
        if now > self._learning_ends or self._source_alive(now):
            return False
        return self._on_probation(data, addr, now)

    def _on_probation(self, data: bytes, addr: SocketAddress, now: float) -> bool:
        """Whether this packet completes a consistent stream from its source: RTP version 2,
        one SSRC, sequence numbers one by one. Each source is on probation of its own, so that
        junk sprayed from elsewhere does not keep a phone behind NAT from being learned."""
        if len(data) < 12 or data[0] >> 6 != 2:
            return False
        seq = data[2] << 8 | data[3]
        ssrc = data[8] << 24 | data[9] << 16 | data[10] << 8 | data[11]
        candidate = self._candidates.get(addr)
        if candidate is None:
            if len(self._candidates) >= _MAX_CANDIDATES:
                self._candidates.clear()  # someone sprays from many addresses: start over
            candidate = self._candidates[addr] = _Candidate(ssrc, seq, now)
        elif ssrc == candidate.ssrc and seq == candidate.next_seq:
            candidate.count += 1
        else:
            candidate.restart(ssrc, seq, now)
        candidate.next_seq = (seq + 1) & 0xFFFF
        policy = self._policy
        return (candidate.count >= policy.probation_packets
                and now - candidate.since >= policy.probation_seconds)

    def _heard_from_source(self) -> int:
        """Packets from the latched source so far, whichever path took them (a counter that
        only moves: liveness is read from its changes, at no cost per packet)."""
        on_socket = self._rtp.source_packets if self._rtp is not None else 0
        return self._source_packets + on_socket

    def _source_alive(self, now: float) -> bool:
        """Whether the latched source was heard within alive_seconds. Checked only while
        another source sends: a count that moved since the last check counts as heard now,
        which errs towards keeping the source."""
        if self._rtp_source is None:
            return False
        heard = self._heard_from_source()
        if heard != self._source_seen_count:
            self._source_seen_count = heard
            self._source_seen_at = now
        return now - self._source_seen_at < self._policy.alive_seconds

    def _rtcp_received(self, data: bytes, addr: SocketAddress) -> None:
        """RTCP from a source other than the latched one (or before latching): taken from the
        SDP's RTCP address, or from the latched RTP source's host (NAT maps the RTCP port
        its own way)."""
        rtp_source = self._rtp_source
        if (_is_signalled(self._signalled_rtcp, addr)
                or (rtp_source is not None and addr[0] == rtp_source[0])):
            self._rtcp_source = addr
            self._configure_sockets()
            self._on_rtcp(data)
        else:
            self._drop_foreign(addr)

    def _drop_foreign(self, addr: SocketAddress) -> None:
        self.foreign_packets += 1
        forwarder = self._on_rtp
        if isinstance(forwarder, Forwarder):
            forwarder.stats.dropped += 1
        if not self._foreign_logged:
            self._foreign_logged = True
            log.info("plain leg %s: dropping media from %s (signalled %s, latched %s)",
                        self.port if self._rtp is not None else "-", _shown(addr),
                        self._signalled, _shown(self._rtp_source))


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_signalled(signalled: Address | None, addr: SocketAddress) -> bool:
    """Whether a packet's source is the address the SDP gave (compared as addresses: the text
    forms may differ). Only for packets not from the latched source."""
    return (signalled is not None and addr[1] == signalled[1]
            and _ip_address(addr[0]) == _ip_address(signalled[0]))


def _shown(addr: SocketAddress | None) -> str:
    return "-" if addr is None else f"{addr[0]}:{addr[1]}"[:80]


def _ignore(_: bytes) -> None:
    pass


def _nothing() -> None:
    pass
