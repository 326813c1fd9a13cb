"""Real SIP clients register with the real gateway: JsSIP over WebSocket, SIPp and pjsua2 over
UDP/TCP. Each test runs with the location service and users in a real redis-server and in memory.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.healthz import bindings_count, gateway_metrics_url, wait_for_bindings
from tests.support.jssip import JsSipAgent
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.sipp import run_sipp

DOMAIN = "example.test"
SHORT_EXPIRES = 10  # JsSIP's own floor; it refreshes 5 s before expiry below 64 s


@pytest.fixture(params=["memory", "redis"])
async def client_gateway(
    request: pytest.FixtureRequest, gateway_factory: GatewayFactory
) -> GatewayProcess:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "tcp", "ws"), redis_url=redis_url, domain=DOMAIN,
        extra_args=["--min-expires", str(SHORT_EXPIRES)],
    )


async def test_jssip_registers_refreshes_and_unregisters(client_gateway: GatewayProcess) -> None:
    base = gateway_metrics_url(client_gateway)
    alice = await JsSipAgent.start(f"reg-alice-{secrets.token_hex(3)}")
    bob = await JsSipAgent.start(f"reg-bob-{secrets.token_hex(3)}")
    try:
        registered = await alice.register(
            client_gateway.ws_url, f"sip:alice@{DOMAIN}", client_gateway.users["alice"],
            register_expires=SHORT_EXPIRES,
        )
        # JsSIP reports "registered" only when the 200 lists its own Contact with an expiry.
        assert (registered["outcome"], registered["status"]) == ("registered", 200)
        event = await alice.wait_for("registered")
        assert ".invalid;transport=ws>" in event["contact"]
        assert f"expires={SHORT_EXPIRES}" in event["contact"]
        assert await bindings_count(base) == 1
        # Outlive the first registration: only JsSIP's refresh keeps alice reachable.
        await asyncio.sleep(SHORT_EXPIRES + 3)
        assert await bindings_count(base) == 1
        assert alice.unclaimed_events("registrationFailed") == []
        assert (await bob.register(client_gateway.ws_url, f"sip:bob@{DOMAIN}",
                                   client_gateway.users["bob"]))["status"] == 200
        sent = await bob.send_message(f"sip:alice@{DOMAIN}", "after the refresh")
        assert (sent["outcome"], sent["status"]) == ("succeeded", 200)
        received = await alice.wait_for("newMessage")
        assert received["body"] == "after the refresh"
        assert received["from"] == f"sip:bob@{DOMAIN}"

        unregistered = await alice.unregister()
        assert (unregistered["outcome"], unregistered["status"]) == ("unregistered", 200)
        assert await bindings_count(base) == 1  # bob's only
        unreachable = await bob.send_message(f"sip:alice@{DOMAIN}", "nobody home")
        assert unreachable["outcome"] == "failed"
        assert unreachable["status"] in (404, 480)
    finally:
        await alice.stop()
        await bob.stop()


async def test_jssip_with_a_wrong_password_is_refused_and_binds_nothing(
    client_gateway: GatewayProcess,
) -> None:
    intruder = await JsSipAgent.start(f"reg-intruder-{secrets.token_hex(3)}")
    bob = await JsSipAgent.start(f"reg-bob-{secrets.token_hex(3)}")
    try:
        refused = await intruder.register(client_gateway.ws_url, f"sip:alice@{DOMAIN}",
                                          "not-alice's-password")
        assert (refused["outcome"], refused["status"]) == ("registrationFailed", 401)
        assert await bindings_count(gateway_metrics_url(client_gateway)) == 0
        assert (await bob.register(client_gateway.ws_url, f"sip:bob@{DOMAIN}",
                                   client_gateway.users["bob"]))["status"] == 200
        unreachable = await bob.send_message(f"sip:alice@{DOMAIN}", "hello?")
        assert unreachable["status"] in (404, 480)
        assert intruder.unclaimed_events("newMessage") == []
    finally:
        await intruder.stop()
        await bob.stop()


async def test_sipp_registers_over_udp_with_digest(client_gateway: GatewayProcess) -> None:
    result = await run_sipp(
        "register_uac.xml", remote=f"127.0.0.1:{client_gateway.udp_port}", service="alice",
        auth=("alice", client_gateway.users["alice"]), keys={"domain": DOMAIN, "expires": "300"},
        timeout=20.0,
    )
    result.assert_success()
    assert await bindings_count(gateway_metrics_url(client_gateway)) == 1


async def test_sipp_with_a_wrong_password_gets_no_200(client_gateway: GatewayProcess) -> None:
    result = await run_sipp(
        "register_uac.xml", remote=f"127.0.0.1:{client_gateway.udp_port}", service="alice",
        auth=("alice", "wrong"), keys={"domain": DOMAIN, "expires": "300"}, timeout=10.0,
    )
    assert result.failed_calls == 1 and result.successful_calls == 0, result.describe()
    assert await bindings_count(gateway_metrics_url(client_gateway)) == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_pjsua_registers_and_unregisters(
    client_gateway: GatewayProcess, transport: str,
) -> None:
    base = gateway_metrics_url(client_gateway)
    phone = await PjsuaPhone.start(f"reg-{transport}-{secrets.token_hex(3)}", transport=transport)
    try:
        port = getattr(client_gateway, f"{transport}_port")
        registered = await phone.register("127.0.0.1", port, "alice",
                                          client_gateway.users["alice"], DOMAIN,
                                          transport=transport, expires=120)
        assert (registered["code"], registered["active"]) == (200, True)
        assert 110 <= registered["expiration"] <= 120
        assert await bindings_count(base) == 1
        unregistered = await phone.unregister()
        assert unregistered["code"] == 200
        assert await wait_for_bindings(base, 0) == 0
    finally:
        await phone.stop()
