"""Calls from networks where the browser cannot reach the gateway's media directly: the web phone
(Chromium) calls a pjsua2 phone through a real coturn, started from deploy/coturn/turnserver.conf
with the gateway's TURN REST secret (the gateway hands out the credentials in /config.json).

- relay only (`iceTransportPolicy: "relay"`), over TURN/UDP, TURN/TCP and TURN/TLS;
- Chromium in a network namespace that drops all UDP: the call connects over TURN/TCP;
- a relay-only browser whose TURN server is down: the web phone says the network blocked media;
- coturn itself: the gateway's REST credentials allocate, a wrong secret does not, and the
  relay reaches the allowed gateway address but not a private one.

Each connected call proves tone both ways and, from getStats(), that the selected candidate pair
is a relay candidate over the intended protocol; the web phone's quality line names the path.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol

from gateway.web import turn_credentials
from tests.browser.test_browser_to_phone import PHONE_TONE, assert_both_hear
from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.blocked_udp import (
    BlockedUdpNetwork,
    BlockedUdpUnavailable,
    blocked_udp_network,
    secure_origin_flag,
)
from tests.support.browser import BrowserSession, write_browser_tone
from tests.support.coturn import RELAY_ONLY_POLICY, Coturn, running_coturn
from tests.support.healthz import gateway_http_url
from tests.support.pjsua_phone import PjsuaPhone, registered_phone
from tests.support.ports import free_port

BROWSER_TONE = 440.0
TURN_SECRET = secrets.token_hex(32)
PATH_TEXT = {"udp": "relay (UDP)", "tcp": "relay (TCP)", "tls": "relay (TLS)"}
ICE_FAILURE_TIMEOUT_MS = 60_000  # Chromium gives up on ICE after ~30 s of failed checks


@pytest.fixture(scope="module")
def no_udp_network() -> Iterator[BlockedUdpNetwork | None]:
    """One namespace per module (None where namespaces cannot be made: that test skips)."""
    try:
        with blocked_udp_network() as network:
            yield network
    except BlockedUdpUnavailable:
        yield None


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory,
           no_udp_network: BlockedUdpNetwork | None) -> Iterator[Coturn]:
    """One coturn per module, on loopback and on the blocked network's root-side address."""
    listen = ["127.0.0.1"]
    if no_udp_network is not None:
        listen.append(no_udp_network.host_address)
    with running_coturn(tmp_path_factory.mktemp("coturn"), secret=TURN_SECRET,
                        listen=listen) as server:
        yield server


async def start_gateway_with_turn(gateway_factory: GatewayFactory, coturn: Coturn,
                                  *transports: str, extra_args: tuple[str, ...] = (),
                                  host: str | None = None) -> GatewayProcess:
    return await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        extra_args=[*coturn.gateway_args(*transports, host=host), *extra_args],
    )


@pytest.fixture
async def relay_browser(tmp_path: Path, coturn: Coturn) -> AsyncIterator[BrowserSession]:
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with launch_private_browser(tone, name="relay-only",
                                      extra_args=coturn.chromium_args()) as session:
        await session.context.add_init_script(RELAY_ONLY_POLICY)
        yield session


async def call_and_hear(web: WebPhone, gateway: GatewayProcess, phone: PjsuaPhone,
                        recording: Path) -> dict[str, str]:
    """Signs in, calls bob (who answers), proves tone both ways; the selected pair."""
    await web.sign_in_and_wait("alice", gateway.users["alice"])
    await phone.set_auto_answer(200)
    await web.call("bob")
    try:
        assert await web.wait_call_state("active", 30_000) == "In call with bob"
    except Exception as error:
        status = await web.page.inner_text("#call-status")
        raise AssertionError(f"call not active ({status}): {web.console()}") from error
    await assert_both_hear(web, phone, recording)
    stats = await web.stats()
    assert stats["selectedPair"] is not None, (stats, web.console())
    return stats["selectedPair"]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_relay_only_browser_calls_a_phone_through_coturn(
    transport: str, gateway_factory: GatewayFactory, coturn: Coturn,
    relay_browser: BrowserSession, tmp_path: Path,
) -> None:
    gateway = await start_gateway_with_turn(gateway_factory, coturn, transport)
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone:
        web = await WebPhone.open(relay_browser, gateway_http_url(gateway), "alice")
        pair = await call_and_hear(web, gateway, phone, tmp_path / "phone-heard.wav")
        assert pair["localType"] == "relay", (pair, coturn.log_tail())
        assert pair["relayProtocol"] == transport, pair
        quality = await web.wait_quality_line()
        assert quality["path"] == PATH_TEXT[transport], quality
        assert PATH_TEXT[transport] in quality["text"], quality
        if transport == "tls":
            await web.screenshot("40-call-over-turn-tls")
        await web.hang_up()
        await phone.wait_for("call_state", 15, state="DISCONNECTED")


async def allocate(coturn: Coturn, secret: str) -> TurnClientUdpProtocol:
    """A TURN/UDP allocation with credentials made the way the gateway makes them."""
    credentials = turn_credentials(secret, "alice", 600, time.time())
    server = (coturn.host, coturn.port)
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(server, username=credentials.username,
                                      password=credentials.credential, lifetime=600,
                                      channel_refresh_time=300),
        remote_addr=server)
    try:
        await client.connect()
    except BaseException:
        client.transport.close()
        raise
    return client


async def test_coturn_takes_the_gateways_credentials_and_relays_only_to_allowed_peers(
    coturn: Coturn,
) -> None:
    """What deploy/coturn/turnserver.conf promises: no allocation without the shared secret,
    and no relaying to private addresses (only the one the test allows, the gateway's)."""
    with pytest.raises(stun.TransactionFailed, match="401"):
        await allocate(coturn, "not-" + TURN_SECRET)
    client = await allocate(coturn, TURN_SECRET)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(5.0)
            await client.send_data(b"relayed", peer.getsockname())
            data, source = await asyncio.to_thread(peer.recvfrom, 64)
            assert data == b"relayed" and source == client.relayed_address
        with pytest.raises(stun.TransactionFailed, match="403"):
            await client.send_data(b"into the LAN", ("192.168.0.1", 5060))
    finally:
        await client.delete()


def test_the_namespace_drops_udp_and_passes_tcp(no_udp_network: BlockedUdpNetwork | None
                                                ) -> None:
    """The blocked network blocks what it claims to: nothing else below would prove it."""
    if no_udp_network is None:
        pytest.skip("network namespaces unavailable (need root, ip, nft)")
    network = no_udp_network
    host = network.host_address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.create_server((host, 0)) as tcp:
        udp.bind((host, 0))
        udp.settimeout(1.0)
        # A dropped locally sent packet fails sendto() with EPERM: that counts as blocked too.
        probe = ("import contextlib, socket\n"
                 "with contextlib.suppress(PermissionError):\n"
                 "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
                 f"b'probe', ('{host}', {udp.getsockname()[1]}))\n"
                 f"socket.create_connection(('{host}', {tcp.getsockname()[1]}), 5).close()\n")
        dropped_before = network.dropped_udp_packets()
        result = network.run_inside(sys.executable, "-c", probe, check=False)
        assert result.returncode == 0, f"TCP from the namespace failed: {result.stderr}"
        with pytest.raises(TimeoutError):
            udp.recvfrom(64)
        assert network.dropped_udp_packets() > dropped_before


async def test_browser_without_udp_calls_a_phone_over_turn_tcp(
    gateway_factory: GatewayFactory, coturn: Coturn, no_udp_network: BlockedUdpNetwork | None,
    tmp_path: Path,
) -> None:
    if no_udp_network is None:
        pytest.skip("network namespaces unavailable (need root, ip, nft)")
    network = no_udp_network
    # The browser reaches the web phone's page and WebSocket on the root-side address; media
    # stays on the gateway's loopback address, which only coturn's relay can reach.
    ws_port = free_port(socket.SOCK_STREAM)
    gateway = await start_gateway_with_turn(
        gateway_factory, coturn, "udp", "tcp", host=network.host_address,
        extra_args=("--ws", f"{network.host_address}:{ws_port}"))
    page = f"http://{network.host_address}:{ws_port}"
    tone = write_browser_tone(tmp_path / "browser.wav", BROWSER_TONE)
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone, \
            launch_private_browser(tone, name="no-udp", executable=str(network.chromium),
                                   extra_args=(*coturn.chromium_args(), secure_origin_flag(page))
                                   ) as browser:
        web = await WebPhone.open(browser, page, "alice")
        pair = await call_and_hear(web, gateway, phone, tmp_path / "phone-heard.wav")
        assert pair["localType"] == "relay", (pair, coturn.log_tail())
        assert pair["relayProtocol"] == "tcp", pair
        quality = await web.wait_quality_line()
        assert quality["path"] == "relay (TCP)", quality
        await web.screenshot("41-no-udp-call-over-turn-tcp")
        await web.hang_up()
        await phone.wait_for("call_state", 15, state="DISCONNECTED")


async def test_media_blocked_by_the_network_is_named(
    gateway_factory: GatewayFactory, coturn: Coturn, relay_browser: BrowserSession,
) -> None:
    """Relay only, and the TURN server the gateway names is not running: no media path."""
    dead_port = free_port(socket.SOCK_STREAM)
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        extra_args=["--turn-secret", TURN_SECRET,
                    "--turn-uri", f"turn:127.0.0.1:{dead_port}?transport=tcp"],
    )
    async with registered_phone(gateway, "bob", PHONE_TONE) as phone:
        web = await WebPhone.open(relay_browser, gateway_http_url(gateway), "alice")
        await web.sign_in_and_wait("alice", gateway.users["alice"])
        await phone.set_auto_answer(200)
        await web.call("bob")
        await web.page.wait_for_selector("#error:not([hidden])", timeout=ICE_FAILURE_TIMEOUT_MS)
        error = await web.page.inner_text("#error")
        assert "media blocked by the network" in error, (error, web.console())
        await web.screenshot("42-media-blocked-by-the-network")
        assert await web.wait_call_state("idle", ICE_FAILURE_TIMEOUT_MS) == "Call failed"
        await phone.wait_for("call_state", 30, state="DISCONNECTED")

