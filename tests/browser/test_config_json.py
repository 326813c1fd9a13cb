"""The page and its settings over HTTP: `/` serves the phone (and still upgrades WebSockets),
`/config.json` derives the WebSocket URL from the request and hands out TURN REST credentials
that verify with the shared secret the way coturn checks them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import aiohttp
import pytest

from tests.fixtures.gateway import GatewayFactory, GatewayProcess, GatewayStartError
from tests.support.healthz import gateway_http_url

TURN_SECRET = "coturn-static-auth-secret"
TURN_TTL = 600


async def get_json(url: str, **headers: str) -> tuple[int, dict[str, object] | str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as reply:
        if reply.content_type == "application/json":
            return reply.status, await reply.json()
        return reply.status, await reply.text()


async def test_root_serves_the_phone_and_its_bundle(gateway: GatewayProcess) -> None:
    base = gateway_http_url(gateway)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/") as page:
            assert page.status == 200
            html = await page.text()
            assert '<script defer src="/phone.bundle.js">' in html
        async with session.get(f"{base}/phone.bundle.js") as bundle:
            assert bundle.status == 200
            assert bundle.content_type == "text/javascript"
            assert "JsSIP" in await bundle.text()
        async with session.get(f"{base}/package.json") as private:
            assert private.status == 404
        # sipml5 and Asterisk users connect their WebSocket to "/".
        async with session.ws_connect(f"ws://127.0.0.1:{gateway.ws_port}/",
                                      protocols=("sip",)) as socket:
            assert socket.protocol == "sip"


async def test_settings_without_ice_servers(gateway: GatewayProcess) -> None:
    status, settings = await get_json(f"{gateway_http_url(gateway)}/config.json")
    assert status == 200
    assert settings == {
        "ws_url": f"ws://127.0.0.1:{gateway.ws_port}/ws",
        "domain": "example.test",
        "ice_servers": [],
        "turn_ttl": None,
    }
    # The URL follows the name the browser used, and wss behind a TLS-terminating proxy.
    _, proxied = await get_json(f"{gateway_http_url(gateway)}/config.json",
                                Host="phone.example.test", **{"X-Forwarded-Proto": "https"})
    assert isinstance(proxied, dict)
    assert proxied["ws_url"] == "wss://phone.example.test/ws"


async def test_turn_rest_credentials(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(12)}, transports=("ws",),
        extra_args=["--stun-uri", "stun:127.0.0.1:3478", "--turn-uri", "turn:127.0.0.1:3478",
                    "--turn-uri", "turn:127.0.0.1:3478?transport=tcp",
                    "--turn-secret", TURN_SECRET, "--turn-ttl", str(TURN_TTL)],
    )
    before = int(time.time())
    status, settings = await get_json(f"{gateway_http_url(gateway)}/config.json?user=alice")
    after = int(time.time())
    assert status == 200 and isinstance(settings, dict)
    stun, turn = settings["ice_servers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert turn["urls"] == ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"]
    expiry, user = turn["username"].split(":")
    assert user == "alice"
    assert before + TURN_TTL <= int(expiry) <= after + TURN_TTL
    expected = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    assert settings["turn_ttl"] == TURN_TTL

    status, refusal = await get_json(
        f"{gateway_http_url(gateway)}/config.json?user=alice:9999999999"
    )
    assert status == 400 and "user" in refusal


async def test_turn_uri_without_secret_is_refused(gateway_factory: GatewayFactory) -> None:
    with pytest.raises(GatewayStartError, match="turn_uris need turn_secret"):
        await gateway_factory(transports=("ws",), extra_args=["--turn-uri", "turn:h:3478"])
