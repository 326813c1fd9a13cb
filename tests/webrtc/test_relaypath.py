"""The C relay path (webrtc/_relaypath.c): real sockets, real libsrtp sessions, and the proof
that packets went through C (the pump's own count moved, the Python handlers saw nothing)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pylibsrtp import Policy, Session

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.test_media_relay import wait_for
from tests.webrtc.test_transport import connect
from webrtc import MediaRelay
from webrtc.datagram import Address, DatagramSocket, LoopLag, SocketPoller
from webrtc.forwarding import MAX_TRACKED_SSRCS, DirectionStats, Forwarder, Route
from webrtc.srtp import protect, unprotect

if TYPE_CHECKING:
    from webrtc._relaypath import RelayPump

relaypath = pytest.importorskip("webrtc._relaypath")
SWITCHED_OFF = os.environ.get("WS2SIP_RELAY_PUMP") == "0"
c_path = pytest.mark.skipif(SWITCHED_OFF, reason="C relay path switched off")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16 bytes of key, 14 of salt
OTHER_KEY = bytes(range(100, 130))
SSRC = 0x11223344


class Recorder(asyncio.DatagramProtocol):
    """What the Python path of a socket got: datagrams with source, and errors."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Address]] = []
        self.errors: list[Exception] = []

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


def rtp(seq: int, payload_type: int = 0, payload: bytes = b"\xaa" * 160, *,
        timestamp: int = 0, ssrc: int = SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq, timestamp or seq * 160, ssrc) + payload


def srtp_session(key: bytes, ssrc_type: int) -> Session:
    policy = Policy(key=key, ssrc_type=ssrc_type)
    policy.allow_repeat_tx = True
    return Session(policy)


def outbound(key: bytes = KEY) -> Session:
    return srtp_session(key, Policy.SSRC_ANY_OUTBOUND)


def inbound(key: bytes = KEY) -> Session:
    return srtp_session(key, Policy.SSRC_ANY_INBOUND)


def udp_peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


@dataclass
class Relay:
    """A relay socket pair (source, destination) and the peers on either side."""

    source: DatagramSocket
    source_python: Recorder
    destination: DatagramSocket
    destination_python: Recorder
    sender: socket.socket
    receiver: socket.socket
    forwarder: Forwarder  # the direction's Python path (the source's on_packet once latched)

    @property
    def stats(self) -> DirectionStats:
        return self.forwarder.stats

    @property
    def expected_seq(self) -> dict[int, int]:
        return self.forwarder.expected_seq

    @property
    def pump(self) -> RelayPump:  # the C type, only where it is built
        assert self.source.pump is not None
        return self.source.pump

    def configure(self, *, srtp_in: Session | None = None, srtp_out: Session | None = None,
                  routes: dict[int, tuple[int, int]] | None = None,
                  receiver: socket.socket | None = None) -> None:
        assert self.destination.pump is not None
        self.attach_sequences()
        self.pump.relay(
            routes={0: (8, 0)} if routes is None else routes,
            destinations=[(self.destination.pump, (receiver or self.receiver).getsockname())],
            srtp_in=unprotect(srtp_in).native() if srtp_in is not None else None,
            srtp_out=protect(srtp_out).native() if srtp_out is not None else None,
            sequences=self.forwarder.sequences, stats=self.stats)

    def attach_sequences(self) -> None:
        """As webrtc.relay_pumps does while the C path relays this direction."""
        if self.forwarder.sequences is None:
            self.forwarder.sequences = relaypath.SequenceTable(
                self.expected_seq, MAX_TRACKED_SSRCS)

    def back_to_python(self) -> None:
        """As webrtc.relay_pumps' stop(): every packet to the Forwarder, table detached."""
        self.pump.stop()
        self.forwarder.sequences.write_back()
        self.forwarder.sequences = None

    def relay_in_python(self) -> None:
        """The latched leg's Python path: the Forwarder, relaying payload type 0 as 8."""
        address = self.receiver.getsockname()
        self.forwarder.routes[0] = Route(8, lambda packet: self.destination.sendto(packet, address))
        self.source.on_packet = self.forwarder

    def send(self, packet: bytes) -> None:
        self.sender.sendto(packet, self.source.get_extra_info("sockname"))

    async def received(self, sock: socket.socket | None = None) -> bytes:
        peer = sock or self.receiver
        data, source = await asyncio.get_running_loop().run_in_executor(
            None, peer.recvfrom, 4096)
        assert source == self.destination.get_extra_info("sockname")
        return bytes(data)


def bound(protocol: asyncio.DatagramProtocol, lag: LoopLag,
          poller: SocketPoller | None = None) -> DatagramSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return DatagramSocket(sock, protocol, lag, poller)


@pytest.fixture
async def relay_pair() -> AsyncIterator[Relay]:
    lag = LoopLag()
    source_python, destination_python = Recorder(), Recorder()
    pair = Relay(
        source=bound(source_python, lag), source_python=source_python,
        destination=bound(destination_python, lag), destination_python=destination_python,
        sender=udp_peer(), receiver=udp_peer(), forwarder=Forwarder(),
    )
    yield pair
    pair.source.close()
    pair.destination.close()
    pair.sender.close()
    pair.receiver.close()


@pytest.fixture
def sockets_to_close() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@c_path
async def test_srtp_in_is_relayed_as_plain_rtp_with_the_payload_type_mapped(
    relay_pair: Relay,
) -> None:
    relay_pair.configure(srtp_in=inbound())
    browser = outbound()
    sent = rtp(7, payload=b"voice" * 32, timestamp=123456)
    relay_pair.send(browser.protect(sent))

    received = await relay_pair.received()
    assert received[1] == 8  # payload type 0 -> 8, marker clear
    assert received[:1] + received[2:] == sent[:1] + sent[2:]  # seq, ts, SSRC, payload
    assert relay_pair.pump.relayed == 1
    assert relay_pair.source_python.datagrams == []


@c_path
async def test_plain_rtp_in_is_protected_for_the_receiver(relay_pair: Relay) -> None:
    relay_pair.configure(srtp_out=outbound(), routes={0: (0, 0), 101: (96, 0)})
    browser = inbound()
    sent = [rtp(1, payload=b"tone" * 40), rtp(2, 101 | 0x80, b"\x01\x0a\x00\xa0")]
    for packet in sent:
        relay_pair.send(packet)

    first = browser.unprotect(await relay_pair.received())
    second = browser.unprotect(await relay_pair.received())
    assert first == sent[0]
    assert second[1] == 96 | 0x80  # the marker bit survives the mapping
    assert second[2:] == sent[1][2:]
    assert relay_pair.pump.relayed == 2
    assert relay_pair.source_python.datagrams == []


@c_path
async def test_counters_and_loss_go_into_the_direction_stats(relay_pair: Relay) -> None:
    relay_pair.configure()
    for seq in (1, 2, 5, 6):  # 3 and 4 lost
        relay_pair.send(rtp(seq))
        await relay_pair.received()
    relay_pair.send(rtp(100, ssrc=0x55))  # a second stream: no loss on its first packet
    await relay_pair.received()

    assert relay_pair.stats == DirectionStats()  # counts wait in C until flushed
    relay_pair.pump.flush()
    assert relay_pair.stats == DirectionStats(packets=5, bytes=5 * 172, dropped=0, lost=2)
    assert relay_pair.expected_seq == {SSRC: 7, 0x55: 101}  # the Forwarder's SSRCs
    relay_pair.pump.flush()
    assert relay_pair.stats.packets == 5  # flushed once


async def relayed(relay: Relay, *seqs: int, ssrc: int = SSRC, payload_type: int = 0) -> None:
    for seq in seqs:
        relay.send(rtp(seq, payload_type, ssrc=ssrc))
        await relay.received()


@c_path
async def test_an_ssrc_is_known_for_rtcp_from_its_first_c_relayed_packet(
    relay_pair: Relay,
) -> None:
    relay_pair.configure()
    await relayed(relay_pair, 40)
    assert relay_pair.forwarder.known_ssrcs == {SSRC}  # without a flush
    assert relay_pair.pump.relayed == 1


@c_path
async def test_loss_is_counted_once_across_c_python_c(relay_pair: Relay) -> None:
    relay_pair.relay_in_python()
    relay_pair.configure()
    await relayed(relay_pair, 1, 2, 4)  # C: 3 lost
    relay_pair.back_to_python()
    await relayed(relay_pair, 5, 6, 8)  # Python: 7 lost
    relay_pair.configure()
    await relayed(relay_pair, 9, 11)  # C again: 10 lost
    relay_pair.pump.flush()

    assert relay_pair.pump.relayed == 5
    assert relay_pair.stats == DirectionStats(packets=8, bytes=8 * 172, lost=3)
    assert relay_pair.expected_seq == {SSRC: 12}


@c_path
async def test_python_fallbacks_count_on_the_c_table_while_it_relays(relay_pair: Relay) -> None:
    """A payload type only Python relays (here: one C has no route for), same stream."""
    relay_pair.relay_in_python()
    relay_pair.forwarder.routes[9] = relay_pair.forwarder.routes[0]
    relay_pair.configure()
    await relayed(relay_pair, 1, 2)
    await relayed(relay_pair, 3, payload_type=9)  # Python
    await relayed(relay_pair, 4, 6)  # C: only 5 is lost
    relay_pair.pump.flush()

    assert relay_pair.pump.relayed == 4
    assert relay_pair.stats.lost == 1
    assert relay_pair.stats.packets == 5
    assert relay_pair.expected_seq == {SSRC: 7}


@c_path
async def test_two_pumps_of_one_forwarder_count_one_stream(relay_pair: Relay) -> None:
    """An ICE restart: the browser's stream moves from the old generation's socket to the new
    one's; both pumps relay into the same Forwarder."""
    relay_pair.configure()
    lag = LoopLag()
    new_generation = bound(Recorder(), lag)
    try:
        assert new_generation.pump is not None and relay_pair.destination.pump is not None
        new_generation.pump.relay(
            routes={0: (8, 0)},
            destinations=[(relay_pair.destination.pump, relay_pair.receiver.getsockname())],
            srtp_in=None, srtp_out=None, sequences=relay_pair.forwarder.sequences,
            stats=relay_pair.stats)
        await relayed(relay_pair, 1, 2)
        address = new_generation.get_extra_info("sockname")
        for seq in (3, 5):  # 4 lost
            relay_pair.sender.sendto(rtp(seq), address)
            await relay_pair.received()
        await relayed(relay_pair, 6)  # a late one on the old socket: in sequence
        relay_pair.pump.flush()
        new_generation.pump.flush()
    finally:
        new_generation.close()

    assert relay_pair.stats == DirectionStats(packets=5, bytes=5 * 172, lost=1)
    assert relay_pair.expected_seq == {SSRC: 7}


@c_path
async def test_ssrcs_beyond_the_limit_start_the_table_over(relay_pair: Relay) -> None:
    relay_pair.configure()
    for ssrc in range(1, MAX_TRACKED_SSRCS + 2):
        await relayed(relay_pair, 10, ssrc=ssrc)
    assert relay_pair.forwarder.known_ssrcs == {MAX_TRACKED_SSRCS + 1}
    await relayed(relay_pair, 12, ssrc=MAX_TRACKED_SSRCS + 1)
    await relayed(relay_pair, 12, ssrc=1)  # forgotten: new again, no loss
    relay_pair.pump.flush()
    assert relay_pair.stats.lost == 1
    assert relay_pair.expected_seq == {MAX_TRACKED_SSRCS + 1: 13, 1: 13}


@c_path
async def test_what_is_not_relayable_rtp_reaches_python_with_its_source(
    relay_pair: Relay,
) -> None:
    relay_pair.configure(srtp_in=inbound())
    stun = bytes.fromhex("000100002112a442") + b"\x00" * 12
    rtcp = bytes([0x80, 200]) + b"\x00" * 26
    dtls = bytes([22, 254, 253]) + b"\x00" * 10
    unknown_payload_type = rtp(3, payload_type=9)
    short = b"\x80\x00\x00"
    for packet in (stun, rtcp, dtls, unknown_payload_type, short):
        relay_pair.send(packet)
    await wait_for(lambda: len(relay_pair.source_python.datagrams) == 5)

    sender = relay_pair.sender.getsockname()
    assert relay_pair.source_python.datagrams == [
        (stun, sender), (rtcp, sender), (dtls, sender), (unknown_payload_type, sender),
        (short, sender)]
    assert relay_pair.pump.relayed == 0


@c_path
async def test_on_packet_takes_what_is_not_relayed_without_source(relay_pair: Relay) -> None:
    relay_pair.configure()
    python_path: list[bytes] = []
    relay_pair.source.on_packet = python_path.append
    relay_pair.send(rtp(1, payload_type=9))
    relay_pair.send(rtp(2))
    await relay_pair.received()
    await wait_for(lambda: python_path)
    assert python_path == [rtp(1, payload_type=9)]
    assert relay_pair.pump.relayed == 1


@c_path
async def test_with_a_source_only_its_packets_are_relayed_and_others_reach_python(
    relay_pair: Relay, sockets_to_close: list[socket.socket],
) -> None:
    """Strict source (RTP bleed): a latched leg's pump relays nothing from anyone else, and
    hands it to Python with its address, even where on_packet would take the source's."""
    intruder = udp_peer()
    sockets_to_close.append(intruder)
    relay_pair.configure()
    on_packet: list[bytes] = []
    relay_pair.source.on_packet = on_packet.append
    relay_pair.source.source = relay_pair.sender.getsockname()
    await relayed(relay_pair, 1)
    injected = rtp(2, ssrc=0x66)
    intruder.sendto(injected, relay_pair.source.get_extra_info("sockname"))
    await relayed(relay_pair, 2)  # the source's next packet overtakes nothing
    await wait_for(lambda: relay_pair.source_python.datagrams)

    assert relay_pair.source_python.datagrams == [(injected, intruder.getsockname())]
    assert on_packet == []
    assert relay_pair.pump.relayed == 2
    assert relay_pair.source.source_packets == 2
    relay_pair.receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        relay_pair.receiver.recv(4096)  # the injected packet was not relayed

    relay_pair.send(rtp(3, payload_type=9))  # the source's, not relayable: to on_packet
    await wait_for(lambda: on_packet)
    assert on_packet == [rtp(3, payload_type=9)]
    relay_pair.source.source = None  # no filter: everyone's relayed again
    assert relay_pair.pump.source is None
    intruder.sendto(rtp(4), relay_pair.source.get_extra_info("sockname"))
    relay_pair.receiver.settimeout(5)
    await relay_pair.received()
    assert relay_pair.pump.relayed == 3


@c_path
async def test_srtp_that_fails_authentication_is_not_sent_but_goes_to_python(
    relay_pair: Relay,
) -> None:
    relay_pair.configure(srtp_in=inbound())
    browser = outbound()
    forged = bytearray(browser.protect(rtp(1)))
    forged[20] ^= 0xFF
    relay_pair.send(bytes(forged))
    relay_pair.send(browser.protect(rtp(2)))

    assert await relay_pair.received() == rtp(2)[:1] + b"\x08" + rtp(2)[2:]
    await wait_for(lambda: relay_pair.source_python.datagrams)
    # unchanged, so that the Python path fails on it the same way and counts it
    assert relay_pair.source_python.datagrams == [(bytes(forged), relay_pair.sender.getsockname())]
    assert relay_pair.pump.relayed == 1
    relay_pair.pump.flush()
    assert relay_pair.stats.packets == 1


@c_path
async def test_reconfiguration_takes_new_destination_and_keys(
    relay_pair: Relay, sockets_to_close: list[socket.socket],
) -> None:
    relay_pair.configure(srtp_in=inbound())
    relay_pair.send(outbound().protect(rtp(1)))
    await relay_pair.received()

    moved = udp_peer()
    sockets_to_close.append(moved)
    relay_pair.configure(srtp_in=inbound(OTHER_KEY), receiver=moved)
    relay_pair.send(outbound(KEY).protect(rtp(2)))  # old keys: no longer accepted in C
    relay_pair.send(outbound(OTHER_KEY).protect(rtp(3)))
    assert (await relay_pair.received(moved))[2:4] == b"\x00\x03"
    await wait_for(lambda: relay_pair.source_python.datagrams)
    assert len(relay_pair.source_python.datagrams) == 1
    assert relay_pair.pump.relayed == 2
    relay_pair.pump.flush()
    assert relay_pair.stats.packets == 2  # counted across the reconfiguration

    relay_pair.pump.stop()
    relay_pair.send(rtp(4))
    await wait_for(lambda: len(relay_pair.source_python.datagrams) == 2)
    assert relay_pair.pump.relayed == 2


@c_path
async def test_a_closed_destination_is_never_sent_on_and_a_closed_pump_stops(
    relay_pair: Relay,
) -> None:
    relay_pair.configure()
    destination_pump = relay_pair.destination.pump
    relay_pair.destination.close()
    assert destination_pump is not None and destination_pump.closed
    relay_pair.send(rtp(1))
    await wait_for(lambda: relay_pair.source_python.datagrams)  # Python's path decides
    assert relay_pair.pump.relayed == 0

    pump = relay_pair.pump
    relay_pair.source.close()
    assert pump.closed and not pump.relaying
    with pytest.raises(ValueError, match="closed"):
        relay_pair.configure()


@c_path
async def test_a_whole_call_is_relayed_in_c_both_ways_and_heard(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer,
) -> None:
    session = relay.create_session("call-c")
    await connect(session, browser, phone, "0 101")
    await phone.play_tone(1000.0, 2.0)

    assert_hears(phone.heard(0), 8000, 440.0)
    assert_hears(browser.heard(), browser.rate, 1000.0)
    plain = session._streams["audio"].plain
    assert plain.rtp_pump is not None and plain.rtp_pump.relayed >= 80
    webrtc_leg = session._webrtc
    assert webrtc_leg is not None
    assert sum(s.pump.relayed for s in webrtc_leg.media_sockets() if s.pump) >= 80
    stats = session.stats()
    assert stats["plain_to_webrtc_packets"] >= plain.rtp_pump.relayed
    assert stats["srtp_errors"] == 0


@dataclass
class Polled:
    """Relay sockets served by one SocketPoller, and what their Python paths got."""

    lag: LoopLag
    poller: SocketPoller
    sockets: list[DatagramSocket]
    recorders: list[Recorder]
    sender: socket.socket

    def send(self, index: int, packet: bytes) -> None:
        self.sender.sendto(packet, self.sockets[index].get_extra_info("sockname"))


@pytest.fixture
async def polled() -> AsyncIterator[Polled]:
    lag = LoopLag()
    poller = SocketPoller(lag)
    if not poller.available:
        pytest.skip("RelayPoller switched off")
    recorders = [Recorder(), Recorder(), Recorder()]
    group = Polled(lag, poller, [bound(r, lag, poller) for r in recorders], recorders, udp_peer())
    yield group
    for sock in group.sockets:
        sock.close()
    group.sender.close()


@c_path
async def test_polled_sockets_reach_python_with_their_sources(polled: Polled) -> None:
    for index in range(3):
        polled.send(index, b"stun %d" % index)
    await wait_for(lambda: all(r.datagrams for r in polled.recorders))
    source = polled.sender.getsockname()
    assert [r.datagrams for r in polled.recorders] == [
        [(b"stun 0", source)], [(b"stun 1", source)], [(b"stun 2", source)]]


@c_path
async def test_a_socket_closed_by_a_callback_is_not_read_in_the_same_batch(
    polled: Polled,
) -> None:
    first, second, third = polled.sockets

    class Closer(Recorder):
        def datagram_received(self, data: bytes, addr: Address) -> None:
            super().datagram_received(data, addr)
            second.close()

    closer = Closer()
    assert first.pump is not None
    first.pump.on_packet = lambda packet: closer.datagram_received(packet, ())
    for index in range(3):  # all three ready before the loop polls, served in this order
        polled.send(index, b"x%d" % index)
    await wait_for(lambda: closer.datagrams and polled.recorders[2].datagrams)
    await asyncio.sleep(0.05)  # the second socket's datagram would have been read by now
    assert polled.recorders[1].datagrams == []
    assert second.pump is not None and second.pump.closed
    polled.send(2, b"still served")
    await wait_for(lambda: len(polled.recorders[2].datagrams) == 2)


@c_path
async def test_the_poller_drains_while_behind_and_reads_one_otherwise(polled: Polled) -> None:
    loop_poller = polled.poller._poller  # called directly: one readiness, no loop turn between
    for seq in range(5):
        polled.send(0, b"a%d" % seq)
    loop_poller()
    assert [d for d, _ in polled.recorders[0].datagrams] == [b"a0"]
    polled.lag.behind = True
    loop_poller()
    assert [d for d, _ in polled.recorders[0].datagrams] == [b"a0", b"a1", b"a2", b"a3", b"a4"]


@c_path
async def test_the_poller_leaves_the_loop_with_its_last_socket(polled: Polled) -> None:
    epoll_fd = polled.poller._poller.fileno()
    for sock in polled.sockets:
        sock.close()
    assert polled.poller._poller is None
    with pytest.raises(OSError):
        os.fstat(epoll_fd)  # closed, and so out of the loop's reader set
    recorder = Recorder()
    reopened = bound(recorder, polled.lag, polled.poller)  # a new epoll set, served again
    polled.sockets.append(reopened)
    polled.sender.sendto(b"again", reopened.get_extra_info("sockname"))
    await wait_for(lambda: recorder.datagrams)


@c_path
def test_without_the_extension_the_python_path_relays_the_call() -> None:
    """WS2SIP_RELAY_PUMP=0: no pumps; the Python path alone relays a call both ways."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/webrtc/test_media_relay.py::test_browser_offers_phone_answers_pcmu_relayed",
         "tests/webrtc/test_relaypath.py::test_switched_off_sockets_have_no_pump"],
        cwd=REPO_ROOT, env={**os.environ, "WS2SIP_RELAY_PUMP": "0"},
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout


@pytest.mark.skipif(not SWITCHED_OFF, reason="run by the test above")
async def test_switched_off_sockets_have_no_pump() -> None:
    socket_ = bound(Recorder(), LoopLag())
    assert socket_.pump is None
    socket_.close()
