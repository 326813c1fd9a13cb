"""The page and its settings over HTTP: `/` serves the phone (and still upgrades WebSockets),
`/config.json` derives the WebSocket URL from the request's Host only when it names the gateway,
and hands out TURN REST credentials, which verify with the shared secret the way coturn checks
them, only to a user who answers its digest challenge with the SIP password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sip.digest import DigestChallenge, build_authorization
from tests.browser.webphone import WebPhone, launch_private_browser
from tests.fixtures.gateway import GatewayFactory, GatewayProcess, GatewayStartError
from tests.support.browser import write_browser_tone
from tests.support.healthz import gateway_http_url

TURN_SECRET = "coturn-static-auth-secret"
TURN_TTL = 600


async def get_json(url: str, **headers: str) -> tuple[int, dict[str, Any] | str]:
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
    # The URL follows the name the browser used when it is the gateway's (the SIP domain here,
    # through a reverse proxy's port), and wss behind a TLS-terminating proxy.
    _, proxied = await get_json(f"{gateway_http_url(gateway)}/config.json",
                                Host="example.test:8443", **{"X-Forwarded-Proto": "https"})
    assert isinstance(proxied, dict)
    assert proxied["ws_url"] == "wss://example.test:8443/ws"
    # Any other Host gets the listener as configured, never the forged name.
    for forged in ("evil.test", "evil.test:8080", "127.0.0.1@evil.test", "x/y"):
        _, settings = await get_json(f"{gateway_http_url(gateway)}/config.json", Host=forged)
        assert isinstance(settings, dict)
        assert settings["ws_url"] == f"ws://127.0.0.1:{gateway.ws_port}/ws", forged


def challenge_of(settings: dict[str, Any]) -> DigestChallenge:
    fields = settings["turn_challenge"]
    assert isinstance(fields, dict)
    return DigestChallenge(
        realm=fields["realm"], nonce=fields["nonce"], algorithm=fields["algorithm"],
        qop_options=tuple(fields["qop"].split(",")), opaque=fields["opaque"] or None,
        stale=False,
    )


async def test_turn_rest_credentials_only_for_the_sip_password(
    gateway_factory: GatewayFactory,
) -> None:
    password = secrets.token_urlsafe(12)
    gateway = await gateway_factory(
        users={"alice": password}, transports=("ws",),
        extra_args=["--stun-uri", "stun:127.0.0.1:3478", "--turn-uri", "turn:127.0.0.1:3478",
                    "--turn-uri", "turn:127.0.0.1:3478?transport=tcp",
                    "--turn-secret", TURN_SECRET, "--turn-ttl", str(TURN_TTL)],
    )
    url = f"{gateway_http_url(gateway)}/config.json"
    # Anyone: what the page needs to sign in (STUN too), and a challenge, but no TURN.
    for anonymous in (url, f"{url}?user=alice"):
        status, public = await get_json(anonymous)
        assert status == 200 and isinstance(public, dict)
        assert public["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
        assert public["turn_ttl"] is None
        assert public["ws_url"] == f"ws://127.0.0.1:{gateway.ws_port}/ws"
    assert isinstance(public, dict)
    challenge = challenge_of(public)
    assert challenge.realm == "example.test" and challenge.algorithm == "MD5"

    wrong = build_authorization(challenge, method="GET", uri="/config.json", username="alice",
                                password="not-" + password)
    status, refusal = await get_json(url, Authorization=wrong)
    assert status == 403 and isinstance(refusal, dict)
    assert "ice_servers" not in refusal and refusal["turn_challenge"]["nonce"]

    right = build_authorization(challenge, method="GET", uri="/config.json", username="alice",
                                password=password)
    before = int(time.time())
    status, settings = await get_json(url, Authorization=right)
    after = int(time.time())
    assert status == 200 and isinstance(settings, dict)
    assert "turn_challenge" not in settings
    stun, turn = settings["ice_servers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert turn["urls"] == ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"]
    expiry, user = turn["username"].split(":")
    assert user == "alice"
    assert before + TURN_TTL <= int(expiry) <= after + TURN_TTL
    expected = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    assert settings["turn_ttl"] == TURN_TTL

    # The same Authorization again is a replay; one for another path does not count here.
    status, _ = await get_json(url, Authorization=right)
    assert status == 403
    elsewhere = build_authorization(challenge, method="GET", uri="/other", username="alice",
                                    password=password, nc=2)
    status, _ = await get_json(url, Authorization=elsewhere)
    assert status == 403


async def test_turn_uri_without_secret_is_refused(gateway_factory: GatewayFactory) -> None:
    with pytest.raises(GatewayStartError, match="turn_uris need turn_secret"):
        await gateway_factory(transports=("ws",), extra_args=["--turn-uri", "turn:h:3478"])


async def test_the_signed_in_web_phone_gets_turn_credentials(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    password = secrets.token_urlsafe(12)
    gateway = await gateway_factory(
        users={"alice": password}, transports=("ws",),
        extra_args=["--turn-uri", "turn:127.0.0.1:3478", "--turn-secret", TURN_SECRET],
    )
    tone = write_browser_tone(tmp_path / "tone.wav", 440.0)
    async with launch_private_browser(tone, name="turn") as browser:
        alice = await WebPhone.open(browser, gateway_http_url(gateway), "alice")
        assert await alice.page.evaluate("window.ws2sipPhone.settings.ice_servers") == []
        await alice.sign_in_and_wait("alice", password)
        (turn,) = await alice.page.evaluate("window.ws2sipPhone.settings.ice_servers")
    assert turn["urls"] == ["turn:127.0.0.1:3478"]
    assert turn["username"].endswith(":alice")
    expected = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
