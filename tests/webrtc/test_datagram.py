"""The relay's own UDP sockets (webrtc.datagram) and the plain leg's use of them."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from tests.webrtc.test_media_relay import wait_for
from webrtc.datagram import Address, DatagramSocket, LoopLag
from webrtc.plain import PlainLeg
from webrtc.ports import PortPool


class Recorder(asyncio.DatagramProtocol):
    """Keeps what the socket delivers and how many datagrams had arrived when the event loop
    next ran its scheduled callbacks."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Address]] = []
        self.seen_by_next_callback: list[int] = []
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if not self.datagrams:
            asyncio.get_running_loop().call_soon(
                lambda: self.seen_by_next_callback.append(len(self.datagrams)))
        self.datagrams.append((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def rtp(sequence: int, ssrc: int = 0x1234) -> bytes:
    """A minimal RTP packet (PCMU, empty payload)."""
    return bytes([0x80, 0]) + sequence.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")


def bound_socket(protocol: asyncio.DatagramProtocol, lag: LoopLag) -> DatagramSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return DatagramSocket(sock, protocol, lag)


async def test_datagrams_arrive_with_their_source_and_replies_reach_it(
    peer: socket.socket,
) -> None:
    recorder = Recorder()
    relay_socket = bound_socket(recorder, LoopLag())
    peer.sendto(b"\x80hello", relay_socket.get_extra_info("sockname"))
    await wait_for(lambda: recorder.datagrams)
    assert recorder.datagrams == [(b"\x80hello", peer.getsockname())]

    relay_socket.sendto(b"\x80reply", peer.getsockname())
    assert peer.recvfrom(2048) == (b"\x80reply", relay_socket.get_extra_info("sockname"))

    relay_socket.close()
    assert await asyncio.wait_for(recorder.lost, 5) is None
    assert relay_socket.get_extra_info("socket").fileno() == -1


async def test_on_packet_takes_datagrams_without_their_source(peer: socket.socket) -> None:
    recorder = Recorder()
    relay_socket = bound_socket(recorder, LoopLag())
    packets: list[bytes] = []
    relay_socket.on_packet = packets.append
    peer.sendto(b"\x80direct", relay_socket.get_extra_info("sockname"))
    await wait_for(lambda: packets)
    assert packets == [b"\x80direct"]
    assert recorder.datagrams == []
    relay_socket.close()


async def test_with_a_source_on_packet_takes_only_its_datagrams(peer: socket.socket) -> None:
    """A latched leg's socket: the others' datagrams reach datagram_received with their
    address, whichever path reads (Python here, or the C pump where built)."""
    recorder = Recorder()
    relay_socket = bound_socket(recorder, LoopLag())
    packets: list[bytes] = []
    relay_socket.on_packet = packets.append
    relay_socket.source = peer.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        other.sendto(b"\x80other", relay_socket.get_extra_info("sockname"))
        await wait_for(lambda: recorder.datagrams)
        peer.sendto(b"\x80source", relay_socket.get_extra_info("sockname"))
        await wait_for(lambda: packets)
        assert recorder.datagrams == [(b"\x80other", other.getsockname())]
    assert packets == [b"\x80source"]
    assert relay_socket.source_packets == 1
    relay_socket.close()


async def test_one_datagram_per_readiness_on_time_and_drained_when_behind(
    peer: socket.socket,
) -> None:
    lag = LoopLag()
    on_time, behind = Recorder(), Recorder()
    on_time_socket, behind_socket = bound_socket(on_time, lag), bound_socket(behind, lag)

    for index in range(5):
        peer.sendto(bytes([0x80, index]), on_time_socket.get_extra_info("sockname"))
    await wait_for(lambda: len(on_time.datagrams) == 5)
    assert not lag.behind
    assert on_time.seen_by_next_callback == [1]  # the others came with later readiness events

    # The loop is held up well past its lag timer, which then fires late.
    time.sleep(0.2)
    await asyncio.sleep(0.01)
    assert lag.behind
    for index in range(5):
        peer.sendto(bytes([0x80, index]), behind_socket.get_extra_info("sockname"))
    await wait_for(lambda: len(behind.datagrams) == 5)
    assert behind.seen_by_next_callback == [5]  # all read on the first readiness
    assert [data for data, _ in behind.datagrams] == [bytes([0x80, i]) for i in range(5)]

    on_time_socket.close()
    behind_socket.close()


async def test_plain_leg_with_a_host_name_sends_only_once_the_peer_is_heard(
    peer: socket.socket,
) -> None:
    base = 40000 + 2 * (peer.getsockname()[1] % 5000)
    leg = PlainLeg(PortPool("127.0.0.1", base, base + 20))
    await leg.open()
    received: list[bytes] = []
    leg.on_rtp = received.append
    leg.set_remote("localhost", peer.getsockname()[1], None, False)
    leg.send_rtp(b"\x80\x00before")
    assert leg.rtp_target is None

    # No address to compare with: the source is learned from a consistent stream (LatchPolicy).
    for sequence in range(5):
        peer.sendto(rtp(sequence), ("127.0.0.1", leg.port))
        await asyncio.sleep(0.06)
    await wait_for(lambda: received)
    assert received == [rtp(4)]  # the ones on probation were dropped
    assert leg.rtp_target == peer.getsockname()
    leg.send_rtp(b"\x80\x00after")
    assert peer.recv(2048) == b"\x80\x00after"  # nothing was sent before the latch
    leg.close()
