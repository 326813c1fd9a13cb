"""Real components for media tests: a MediaRelay on loopback, an aiortc browser, an RTP phone."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from tests.webrtc.browser_peer import BrowserPeer
from tests.webrtc.rtp_peer import RtpPeer
from webrtc import MediaRelay


def assert_ports_free(ports: set[int], host: str = "127.0.0.1") -> None:
    """The OS lets us bind every port again: nothing leaked."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))


@contextlib.asynccontextmanager
async def loopback_relay(host: str) -> AsyncIterator[MediaRelay]:
    # A random slice of the range keeps concurrent test runs from probing the same ports.
    base = random.randrange(30000, 60000, 2)
    media_relay = MediaRelay(bind_host=host, port_min=base, port_max=base + 400)
    try:
        yield media_relay
    finally:
        await media_relay.close()


@pytest.fixture
async def relay() -> AsyncIterator[MediaRelay]:
    async with loopback_relay("127.0.0.1") as media_relay:
        yield media_relay


@pytest.fixture
async def phone() -> AsyncIterator[RtpPeer]:
    peer = await RtpPeer().start()
    yield peer
    await peer.close()


@pytest.fixture
async def browser() -> AsyncIterator[BrowserPeer]:
    peer = BrowserPeer(frequency=440.0)
    yield peer
    await peer.close()
