"""RTP bleed (issue 14, High 3): the plain leg's port is not guessable, and its latching follows
the phone's SDP and a consistent stream, never whoever sends first or sends in between.

Real sockets on loopback, a real aiortc browser (DTLS-SRTP) and RTP peers. Where the C relay
path is built, these calls run through it (and the last test runs them again with
WS2SIP_RELAY_PUMP=0, the Python path)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audio import assert_hears
from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from tests.webrtc.sdp_samples import asterisk_sdp
from tests.webrtc.test_datagram import rtp
from tests.webrtc.test_media_relay import BROWSER_TONE, PHONE_TONE, target_of, wait_for
from tests.webrtc.test_transport import connect
from webrtc import MediaRelay
from webrtc.errors import MediaError
from webrtc.plain import LatchPolicy, PlainLeg
from webrtc.ports import PortPool
from webrtc.session import MediaSession

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ATTACKER_TONE = 2000.0
PAYLOAD = b"\xff" * 160  # µ-law silence


def c_path_relays() -> bool:
    if os.environ.get("WS2SIP_RELAY_PUMP") == "0":
        return False
    try:
        import webrtc._relaypath  # noqa: F401
    except ImportError:
        return False
    return True


async def send_paced(peer: RtpPeer, count: int) -> None:
    for _ in range(count):
        peer.send_packet(0, PAYLOAD)
        await asyncio.sleep(0.02)


def assert_relayed_in_c(session: MediaSession) -> None:
    """Where the C path runs, the phone's packets went through it: the filter was in C."""
    pump = session._streams["audio"].plain.rtp_pump
    if c_path_relays():
        assert pump is not None and pump.relayed > 20


async def test_an_attacker_sending_before_the_phone_gets_none_of_the_browsers_audio(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer,
) -> None:
    attacker = await RtpPeer().start()
    try:
        session = relay.create_session("bleed-early")
        plain_offer = await session.process_offer(await browser.offer(), "webrtc")
        phone.target = attacker.target = target_of(plain_offer)
        await send_paced(attacker, 5)  # the port guessed while the phone still rings
        answer = await session.process_answer(asterisk_sdp(phone.port, "0"), "plain")
        await browser.accept_answer(answer)
        await wait_for(lambda: session.stats()["webrtc_to_plain_packets"] > 0)
        await send_paced(attacker, 5)  # answered: the phone has not sent yet
        await phone.play_tone(PHONE_TONE, 1.5)

        assert attacker.packets == [] and attacker.rtcp_packets == []
        assert_hears(phone.heard(0), 8000, BROWSER_TONE)
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
        assert session.stats()["foreign_dropped"] == 10
        assert_relayed_in_c(session)
    finally:
        await attacker.close()


async def test_a_stream_injected_mid_call_is_not_relayed_to_the_browser(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer,
) -> None:
    attacker = await RtpPeer().start()
    try:
        session = relay.create_session("bleed-inject")
        await connect(session, browser, phone)
        attacker.target = phone.target
        phone_sequence = phone._sequence
        talking = asyncio.create_task(phone.play_tone(PHONE_TONE, 2.0))
        await asyncio.sleep(0.5)
        await attacker.play_tone(ATTACKER_TONE, 1.0)  # 50 packets, in sequence, one SSRC
        await talking
        phone_sent = (phone._sequence - phone_sequence) & 0xFFFF

        stats = session.stats()
        assert stats["foreign_dropped"] == 50
        assert stats["plain_to_webrtc_packets"] <= phone_sent
        assert attacker.packets == []
        assert_hears(browser.heard(), browser.rate, PHONE_TONE)
        assert_relayed_in_c(session)
    finally:
        await attacker.close()


async def test_a_phone_behind_nat_is_learned_among_junk_and_keeps_the_call(
    relay: MediaRelay, browser: BrowserPeer, phone: RtpPeer,
) -> None:
    """Its SDP names an address that never sends (a private one, behind NAT); its packets come
    from elsewhere, interleaved with junk from a third address: the phone is the one
    consistent source, so it is learned; a consistent stream that starts after it is not."""
    decoy = await RtpPeer().start()
    attacker = await RtpPeer().start()
    try:
        session = relay.create_session("nat")
        plain_offer = await session.process_offer(await browser.offer(), "webrtc")
        phone.target = attacker.target = target_of(plain_offer)
        await browser.accept_answer(
            await session.process_answer(asterisk_sdp(decoy.port, "0"), "plain"))
        await wait_for(lambda: len(decoy.packets) > 5)  # until learned: the SDP address

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sprayer:
            sprayer.bind(("127.0.0.1", 0))
            sprayer.setblocking(False)

            async def spray() -> None:  # random SSRC and sequence number every time
                for _ in range(100):
                    assert phone.target is not None
                    sprayer.sendto(rtp(secrets.randbits(16), secrets.randbits(32)),
                                   phone.target)
                    await asyncio.sleep(0.01)

            junk = asyncio.create_task(spray())
            talking = asyncio.create_task(phone.play_tone(PHONE_TONE, 2.0))
            await asyncio.sleep(0.6)
            await attacker.play_tone(ATTACKER_TONE, 1.0)  # within the window, phone alive
            await asyncio.gather(junk, talking)
            await asyncio.sleep(0.1)
            try:
                sprayer.recv(2048)
                junk_received = True
            except BlockingIOError:
                junk_received = False  # nothing ever went to the junk's address
        latched = session._streams["audio"].plain.rtp_source
        stats = session.stats()
        assert_relayed_in_c(session)
    finally:
        await decoy.close()
        await attacker.close()
    assert latched == ("127.0.0.1", phone.port)
    assert not junk_received
    assert attacker.packets == []
    assert len(phone.packets) > 60
    assert_hears(phone.heard(0), 8000, BROWSER_TONE)
    assert_hears(browser.heard(), browser.rate, PHONE_TONE)
    assert stats["foreign_dropped"] >= 100 + 50


# -- the latching rule on a bare leg, with short timings ------------------------------------


class Sender:
    """A UDP socket sending one consistent RTP stream."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.ssrc = secrets.randbits(32)
        self.sequence = secrets.randbits(16)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    async def stream(self, port: int, count: int) -> None:
        for _ in range(count):
            self.sock.sendto(rtp(self.sequence, self.ssrc), ("127.0.0.1", port))
            self.sequence = (self.sequence + 1) & 0xFFFF
            await asyncio.sleep(0.02)


async def bare_leg(policy: LatchPolicy) -> tuple[PlainLeg, list[bytes]]:
    base = random.randrange(30000, 60000, 2)
    leg = PlainLeg(PortPool("127.0.0.1", base, base + 40), policy)
    await leg.open()
    received: list[bytes] = []
    leg.on_rtp = received.append
    leg.set_remote("127.0.0.1", 9, None, False)  # an SDP address that never sends
    return leg, received


async def test_a_silent_source_is_replaced_within_the_window_but_not_after_it() -> None:
    first, second, late = Sender(), Sender(), Sender()
    leg, received = await bare_leg(LatchPolicy(learn_seconds=1.5, probation_packets=4,
                                               probation_seconds=0.05, alive_seconds=0.2))
    try:
        await first.stream(leg.port, 6)
        assert leg.rtp_source == first.address
        await asyncio.sleep(0.3)  # the first source falls silent
        # (its last packets are only counted, not timed: the first packet from elsewhere finds
        # it heard "now", so the second source needs alive_seconds more to be learned)
        await second.stream(leg.port, 20)
        assert leg.rtp_source == second.address
        await asyncio.sleep(1.0)  # past the window: nothing new is learned any more
        await late.stream(leg.port, 10)
        assert leg.rtp_source == second.address
        assert leg.rtp_target == second.address
        assert leg.foreign_packets >= 10
    finally:
        leg.close()
        for sender in (first, second, late):
            sender.sock.close()


async def test_nothing_is_learned_before_the_sdp_and_the_sdp_address_always_wins() -> None:
    stranger, phone = Sender(), Sender()
    base = random.randrange(30000, 60000, 2)
    leg = PlainLeg(PortPool("127.0.0.1", base, base + 40),
                   LatchPolicy(probation_seconds=0.05))
    await leg.open()
    received: list[bytes] = []
    leg.on_rtp = received.append
    try:
        await stranger.stream(leg.port, 8)  # no SDP yet
        assert leg.rtp_source is None and received == []
        leg.set_remote(*phone.address, None, False)
        await stranger.stream(leg.port, 8)  # a consistent stream: learned while all is silent
        assert leg.rtp_source == stranger.address
        await phone.stream(leg.port, 3)  # the SDP's address takes over at its first packet
        assert leg.rtp_source == phone.address
        count = len(received)
        await stranger.stream(leg.port, 8)
        assert len(received) == count
    finally:
        leg.close()
        stranger.sock.close()
        phone.sock.close()


async def test_a_phone_silent_on_hold_is_not_replaced_once_the_window_is_over() -> None:
    """The window runs from the call's first packet, the phone's own included: a stream that
    starts later, while the phone is silent (on hold), is not learned."""
    phone, stranger = Sender(), Sender()
    base = random.randrange(30000, 60000, 2)
    leg = PlainLeg(PortPool("127.0.0.1", base, base + 40),
                   LatchPolicy(learn_seconds=0.5, probation_seconds=0.05, alive_seconds=0.2))
    await leg.open()
    received: list[bytes] = []
    leg.on_rtp = received.append
    try:
        leg.set_remote(*phone.address, None, False)
        await phone.stream(leg.port, 5)
        assert leg.rtp_source == phone.address
        await asyncio.sleep(0.7)  # on hold: silent, and the window is over
        await stranger.stream(leg.port, 30)  # longer than alive_seconds: the phone is silent
        assert leg.rtp_source == phone.address
        assert leg.foreign_packets == 30
    finally:
        leg.close()
        phone.sock.close()
        stranger.sock.close()


# -- ports -----------------------------------------------------------------------------------


class _Quiet(asyncio.DatagramProtocol):
    """Ignores everything."""


async def test_ports_are_drawn_at_random_over_the_whole_range_and_never_twice() -> None:
    base = random.randrange(30000, 60000, 2)
    port_max = base + 999
    pool = PortPool("127.0.0.1", base, port_max)
    pairs = [pool.bind_pair(_Quiet, _Quiet) for _ in range(50)]
    try:
        ports = [rtp_socket.get_extra_info("sockname")[1] for rtp_socket, _ in pairs]
        rtcp_ports = [rtcp_socket.get_extra_info("sockname")[1] for _, rtcp_socket in pairs]
        assert all(base <= port < port_max and port % 2 == 0 for port in ports)
        assert rtcp_ports == [port + 1 for port in ports]
        assert len(set(ports)) == 50  # none handed out twice while in use
        # Sequential allocation is monotonic; 50 random draws are not, and reach every quarter
        # of the range (each quarter missed with probability (3/4)^50, about 6e-7).
        assert ports != sorted(ports) and ports != sorted(ports, reverse=True)
        assert {(port - base) * 4 // 1000 for port in ports} == {0, 1, 2, 3}
    finally:
        for rtp_socket, rtcp_socket in pairs:
            pool.release(rtp_socket)
            pool.release(rtcp_socket)
    assert pool.open_ports == frozenset()


async def test_a_full_range_is_used_to_its_last_pair_and_then_refused() -> None:
    base = random.randrange(30000, 60000, 2)
    pool = PortPool("127.0.0.1", base, base + 7)  # four pairs
    pairs = [pool.bind_pair(_Quiet, _Quiet) for _ in range(4)]
    try:
        assert {r.get_extra_info("sockname")[1] for r, _ in pairs} == {
            base, base + 2, base + 4, base + 6}
        with pytest.raises(MediaError) as refused:
            pool.bind_pair(_Quiet, _Quiet)
        assert refused.value.status == 503
    finally:
        for rtp_socket, rtcp_socket in pairs:
            pool.release(rtp_socket)
            pool.release(rtcp_socket)


@pytest.mark.skipif(not c_path_relays(), reason="the C path is not built or switched off")
def test_the_python_path_holds_the_same_line() -> None:
    """WS2SIP_RELAY_PUMP=0: the calls above again, relayed by the Python path alone."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not python_path",
         "tests/webrtc/test_strict_source.py"],
        cwd=REPO_ROOT, env={**os.environ, "WS2SIP_RELAY_PUMP": "0"},
        capture_output=True, text=True, timeout=150, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout, result.stdout
