"""ICE-TCP without TURN: the web phone in a Chromium whose network drops every UDP packet
(tests/support/blocked_udp.py) calls a pjsua2 phone through a gateway that offers passive TCP
candidates (--ice-tcp-listen). No STUN or TURN server exists: the call's media can only take
the browser's TCP connection to the gateway's ICE-TCP port. In calls both ways, each side
hears the other's tone, and the browser's selected candidate pair is TCP."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.browser.test_browser_to_phone import BROWSER_TONE, PHONE_TONE, assert_both_hear
from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.blocked_udp import (
    BlockedUdpNetwork,
    BlockedUdpUnavailable,
    blocked_udp_network,
    check_available,
    secure_origin_flag,
)
from tests.support.browser import BrowserSession, write_browser_tone
from tests.support.healthz import gateway_http_url
from tests.support.pjsua_phone import PjsuaPhone, registered_phone


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def network() -> Iterator[BlockedUdpNetwork]:
    try:
        check_available()
    except BlockedUdpUnavailable as reason:
        pytest.skip(str(reason))
    with blocked_udp_network() as blocked:
        yield blocked


@pytest.fixture(params=[0, 1], ids=["media-in-gateway", "media-worker"])
async def gateway(gateway_factory: GatewayFactory, network: BlockedUdpNetwork,
                  request: pytest.FixtureRequest) -> GatewayProcess:
    """SIP for the phone on loopback; the web phone's page, WebSocket, media and ICE-TCP on the
    root side of the namespace's link, the only address the browser reaches. With a media
    worker, the listener in the gateway process hands each connection to it."""
    host = network.host_address
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "ws"),
        extra_args=["--ws", f"{host}:{free_tcp_port(host)}", "--public-address", host,
                    "--media-address", host, "--ice-tcp-listen", f"{host}:0",
                    "--media-workers", str(request.param)],
    )
    return gateway


def web_url(gateway: GatewayProcess, network: BlockedUdpNetwork) -> str:
    ws_listener = gateway.extra_args[gateway.extra_args.index("--ws") + 1]
    assert ws_listener.startswith(network.host_address)
    return f"http://{ws_listener}"


def ice_tcp_port(gateway: GatewayProcess) -> int:
    """The port the gateway's ICE-TCP listener took (--ice-tcp-listen HOST:0), from its log."""
    found = re.search(r"ICE-TCP on \S+:(\d+)", gateway.log_text())
    assert found is not None, "the gateway logged no ICE-TCP listener"
    return int(found[1])


@pytest.fixture
async def browser(network: BlockedUdpNetwork, gateway: GatewayProcess, tmp_path: Path
                  ) -> AsyncIterator[BrowserSession]:
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    # The page's origin is not loopback: without this, http:// has no getUserMedia.
    secure = secure_origin_flag(web_url(gateway, network))
    async with launch_private_browser(tone, name="no-udp", extra_args=(secure,),
                                      executable=str(network.chromium)) as session:
        yield session


@pytest.fixture
async def phone(gateway: GatewayProcess) -> AsyncIterator[PjsuaPhone]:
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone:
        yield phone


async def assert_media_over_ice_tcp(web: WebPhone, phone: PjsuaPhone, gateway: GatewayProcess,
                                    network: BlockedUdpNetwork, recording: Path) -> None:
    await assert_both_hear(web, phone, recording)
    pair = (await web.stats())["selectedPair"]
    # The browser's side of the connection is its active host candidate, or the
    # peer-reflexive one the gateway's check answer taught it (its connection's own port).
    assert pair["local"].endswith("/tcp") and pair["localType"] in ("host", "prflx"), pair
    assert pair["relayProtocol"] is None, pair
    assert pair["remote"] == f"{network.host_address}:{ice_tcp_port(gateway)}/tcp", pair
    assert pair["remoteType"] == "host", pair
    quality = await web.wait_quality_line()
    assert quality["text"].endswith("via TCP"), quality  # what the user is told


async def test_web_phone_without_udp_calls_and_is_called_over_ice_tcp(
    gateway: GatewayProcess, network: BlockedUdpNetwork, browser: BrowserSession,
    phone: PjsuaPhone, tmp_path: Path,
) -> None:
    web = await WebPhone.open(browser, web_url(gateway, network), "alice")
    await web.sign_in_and_wait("alice", gateway.users["alice"])

    # The browser offers: the gateway's answer carries its passive TCP candidate (ICE
    # controlled side).
    await phone.set_auto_answer(200)
    await web.call("bob")
    assert await web.wait_call_state("active") == "In call with bob", web.console()
    await phone.wait_for("call_state", 15, state="CONFIRMED")
    await assert_media_over_ice_tcp(web, phone, gateway, network, tmp_path / "outgoing.wav")
    assert network.dropped_udp_packets() > 0  # the browser did try UDP: the block is real
    await web.hang_up()
    await phone.wait_for("call_state", 15, state="DISCONNECTED")

    # The gateway offers to the browser (the phone calls): it controls ICE and nominates the
    # TCP pair itself.
    await phone.call(f"sip:alice@{gateway.domain}")
    assert await web.wait_call_state("incoming") == "Incoming call from bob"
    await web.answer()
    assert await web.wait_call_state("active") == "In call with bob", web.console()
    await phone.wait_for("call_state", 15, state="CONFIRMED")
    await assert_media_over_ice_tcp(web, phone, gateway, network, tmp_path / "incoming.wav")
    await phone.hangup()
    assert await web.wait_call_state("idle") == "bob hung up"


async def test_a_browser_that_reaches_udp_keeps_using_it(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    """The passive TCP candidate ranks below UDP: offered as well, it is not chosen."""
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "ws"), extra_args=["--ice-tcp-listen", "127.0.0.1:0"],
    )
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with (launch_private_browser(tone, name="with-udp") as browser,
                registered_phone(gateway, "bob", PHONE_TONE) as phone):
        web = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
        await web.sign_in_and_wait("alice", gateway.users["alice"])
        await phone.set_auto_answer(200)
        await web.call("bob")
        assert await web.wait_call_state("active") == "In call with bob", web.console()
        await web.wait_quality_line()
        pair = (await web.stats())["selectedPair"]
        assert pair["local"].endswith("/udp") and pair["remote"].endswith("/udp"), pair
        assert (await web.wait_quality_line())["text"].endswith("via direct UDP")
        answer = gateway.log_text()
        assert f" {ice_tcp_port(gateway)} typ host tcptype passive" in answer
        await web.hang_up()
