"""The registrar of the real gateway, driven over WebSocket by hand-written REGISTERs.

Every test runs twice: with the location service and users in a real redis-server, and in the
gateway's memory. The gateway's own /healthz bindings count shows what is bound.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid

import pytest
import redis.asyncio as aioredis

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway import test_websocket_edge as edge
from tests.gateway.test_websocket_edge import DOMAIN, ClientFactory
from tests.support.healthz import bindings_count, gateway_metrics_url, wait_for_bindings
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ws_sip import WsSipUa, ws_contact

MIN_EXPIRES = 60  # the gateway's default
FLOW_TIMER = 120  # the gateway's default

# The raw-client fixtures are shared with the WebSocket edge tests.
backend_gateway = edge.backend_gateway
client_factory = edge.client_factory


def contact_values(response_contacts: list[str]) -> dict[str, str]:
    """Contact URI → the parameters after it, from a 200 OK's Contact values."""
    values = {}
    for value in response_contacts:
        match = re.fullmatch(r"<([^>]*)>(.*)", value.strip())
        assert match, value
        values[match[1]] = match[2]
    return values


def uri_of(contact: str) -> str:
    return contact[contact.index("<") + 1:contact.index(">")]


async def test_register_binds_and_echoes_the_contact(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    contact = ws_contact()
    ok = await client.register("alice", backend_gateway.users["alice"], contacts=[contact],
                               expires=300)
    assert ok.status == 200
    listed = contact_values(ok.get_all("contact"))
    assert list(listed) == [uri_of(contact)]
    expires = int(re.search(r";expires=(\d+)", listed[uri_of(contact)])[1])  # type: ignore[index]
    assert 295 <= expires <= 300
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 1


async def test_wrong_password_is_challenged_again_and_binds_nothing(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    refused = await client.register("alice", "not-the-password")
    assert refused.status == 401
    assert refused.get_all("www-authenticate")
    unknown = await client.register("mallory", "whatever")
    assert unknown.status == 401
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0


async def test_binding_another_users_aor_is_403(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    forbidden = await client.register("alice", backend_gateway.users["alice"], aor_user="bob")
    assert forbidden.status == 403
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0


async def test_expires_below_minimum_is_423_with_min_expires(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    brief = await client.register("alice", backend_gateway.users["alice"],
                                  expires=MIN_EXPIRES - 1)
    assert brief.status == 423
    assert brief.get("min-expires") == str(MIN_EXPIRES)
    contact_param = await client.register(
        "alice", backend_gateway.users["alice"], contacts=[ws_contact() + ";expires=5"],
        expires=None,
    )
    assert contact_param.status == 423
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0
    accepted = await client.register("alice", backend_gateway.users["alice"],
                                     expires=MIN_EXPIRES)
    assert accepted.status == 200


async def test_unknown_required_extension_is_420_with_unsupported(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    refused = await client.register("alice", backend_gateway.users["alice"],
                                    headers=[("Require", "outbound, foo")])
    assert refused.status == 420
    assert refused.get("unsupported") == "foo"
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0


async def test_contact_star_with_expires_zero_removes_every_binding(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    password = backend_gateway.users["alice"]
    laptop = await client_factory(backend_gateway)
    phone = await client_factory(backend_gateway)
    assert (await laptop.register("alice", password, contacts=[ws_contact(), ws_contact()])
            ).status == 200
    assert (await phone.register("alice", password)).status == 200
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 3
    cleared = await phone.register("alice", password, contacts=["*"], expires=0)
    assert cleared.status == 200
    assert cleared.get_all("contact") == []
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0
    star_with_expiry = await phone.register("alice", password, contacts=["*"], expires=60)
    assert star_with_expiry.status == 400


async def test_several_contacts_are_listed_with_their_q_and_expiry(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    preferred, fallback, brief = ws_contact(), ws_contact(), ws_contact()
    ok = await client.register(
        "alice", backend_gateway.users["alice"],
        contacts=[f"{fallback};q=0.5", preferred, f"{brief};q=0.7;expires=90"], expires=600,
    )
    assert ok.status == 200
    listed = contact_values(ok.get_all("contact"))
    assert set(listed) == {uri_of(preferred), uri_of(fallback), uri_of(brief)}
    assert ";q=" not in listed[uri_of(preferred)]
    assert ";q=0.5" in listed[uri_of(fallback)]
    assert ";q=0.7" in listed[uri_of(brief)]
    expiries = {uri: int(re.search(r";expires=(\d+)", params)[1])  # type: ignore[index]
                for uri, params in listed.items()}
    assert 595 <= expiries[uri_of(preferred)] <= 600
    assert 595 <= expiries[uri_of(fallback)] <= 600
    assert 85 <= expiries[uri_of(brief)] <= 90
    # Order of preference: q descending.
    assert list(listed)[0] == uri_of(preferred)
    assert list(listed)[-1] == uri_of(fallback)


async def test_cseq_out_of_order_for_the_same_call_id_is_500(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    password = backend_gateway.users["alice"]
    contact = ws_contact()
    first = await client.register("alice", password, contacts=[contact], call_id="c1", cseq=10)
    assert first.status == 200
    replayed = await client.register("alice", password, contacts=[contact], call_id="c1",
                                     cseq=3, expires=0)
    assert replayed.status == 500
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 1  # nothing was applied
    refreshed = await client.register("alice", password, contacts=[contact], call_id="c1",
                                      cseq=20, expires=0)
    assert refreshed.status == 200
    assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0


async def test_outbound_reregistration_replaces_the_old_flow_without_a_ghost(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    password = backend_gateway.users["alice"]
    instance = str(uuid.uuid4())
    outbound = [("Supported", "path, outbound")]
    old_flow = await client_factory(backend_gateway)
    first = await old_flow.register("alice", password, contacts=[ws_contact(instance, 1)],
                                    headers=outbound)
    assert first.status == 200
    assert first.get("require") == "outbound"
    assert first.get("flow-timer") == str(FLOW_TIMER)
    new_flow = await client_factory(backend_gateway)
    new_contact = ws_contact(instance, 1)
    second = await new_flow.register("alice", password, contacts=[new_contact],
                                     headers=outbound)
    assert second.status == 200
    assert second.get("require") == "outbound"
    assert second.get("flow-timer") == str(FLOW_TIMER)
    listed = contact_values(second.get_all("contact"))
    assert list(listed) == [uri_of(new_contact)]
    assert f'+sip.instance="<urn:uuid:{instance}>"' in listed[uri_of(new_contact)]
    assert ";reg-id=1" in listed[uri_of(new_contact)]
    base = gateway_metrics_url(backend_gateway)
    assert await bindings_count(base) == 1
    # The old flow no longer owns the binding: closing it leaves the new one in place.
    await old_flow.close()
    await new_flow.send_text("\r\n\r\n")  # a round trip after the close was processed
    assert await new_flow.receive_text() == "\r\n"
    assert await wait_for_bindings(base, 0, timeout=1.0) == 1


async def test_outbound_headers_only_when_the_client_supports_outbound(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    plain = await client.register("alice", backend_gateway.users["alice"],
                                  contacts=[ws_contact(str(uuid.uuid4()), 1)])
    assert plain.status == 200
    assert plain.get("require") is None and plain.get("flow-timer") is None


async def test_registrations_in_redis_survive_a_restart_and_stay_routable(
    gateway_factory: GatewayFactory, redis_url: str,
) -> None:
    users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    gateway = await gateway_factory(users=users, transports=("udp", "ws"), redis_url=redis_url,
                                    node_id="node-restart", domain=DOMAIN)
    callee = await PjsuaPhone.start("restart-alice", auto_answer=200)
    caller = await PjsuaPhone.start("restart-bob")
    try:
        registered = await callee.register("127.0.0.1", gateway.port("udp"), "alice",
                                           users["alice"], DOMAIN, expires=600)
        assert registered["code"] == 200
        async with aioredis.from_url(redis_url) as store:
            assert await store.exists(f"ws2sip:loc:{{sip:alice@{DOMAIN}}}")
        await gateway.restart()
        assert await bindings_count(gateway_metrics_url(gateway)) == 1
        assert (await caller.register("127.0.0.1", gateway.port("udp"), "bob", users["bob"],
                                      DOMAIN))["code"] == 200
        await caller.call(f"sip:alice@{DOMAIN}")
        incoming = await callee.wait_for("incoming_call", timeout=15.0)
        assert "bob" in incoming["from"]
        answered = await caller.wait_for("call_state", timeout=15.0, state="CONFIRMED")
        assert answered["role"] == "caller"
        await caller.hangup()
    finally:
        await caller.stop()
        await callee.stop()


@pytest.mark.parametrize("backend_gateway", ["memory"], indirect=True)
async def test_memory_registrations_are_gone_after_a_restart(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    client = await client_factory(backend_gateway)
    assert (await client.register("alice", backend_gateway.users["alice"])).status == 200
    await client.close()
    phone = await PjsuaPhone.start("restart-memory-alice")
    try:
        assert (await phone.register("127.0.0.1", backend_gateway.port("udp"), "alice",
                                     backend_gateway.users["alice"], DOMAIN))["code"] == 200
        await backend_gateway.restart()
        assert await bindings_count(gateway_metrics_url(backend_gateway)) == 0
    finally:
        await phone.stop()


BURST = 150  # REGISTERs in flight at once, more than redis-py's default pool of 100
# Every connection of a burst comes from 127.0.0.1: the per-IP limits (gateway/edge_guard.py)
# would refuse most of it, so these gateways lift them.
UNLIMITED_SOURCE = ["--max-connections-per-ip", "0", "--max-requests-per-ip", "0"]


@pytest.fixture
async def burst_gateway(gateway_factory: GatewayFactory, redis_url: str) -> GatewayProcess:
    """alice and bob on a udp+ws gateway on Redis, as backend_gateway["redis"]."""
    return await gateway_factory(
        users={"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)},
        transports=("udp", "ws"), redis_url=redis_url, domain=DOMAIN,
        extra_args=UNLIMITED_SOURCE,
    )


async def register_burst(gateway: GatewayProcess) -> list[int]:
    """BURST connections of alice and bob registering all at once; their final statuses."""
    url = f"ws://127.0.0.1:{gateway.ws_port}/ws"
    clients = [await WsSipUa.connect(url, domain=DOMAIN) for _ in range(BURST)]
    try:
        users = ["alice", "bob"]
        responses = await asyncio.gather(*(
            client.register(users[i % 2], gateway.users[users[i % 2]])
            for i, client in enumerate(clients)
        ))
        return [response.status for response in responses]
    finally:
        for client in clients:
            await client.close()


async def test_every_register_of_a_burst_gets_a_final_response(
    burst_gateway: GatewayProcess,
) -> None:
    statuses = await register_burst(burst_gateway)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) > 0
    assert burst_gateway.returncode is None


async def test_a_burst_beyond_the_redis_pool_size_all_registers(
    burst_gateway: GatewayProcess,
) -> None:
    assert set(await register_burst(burst_gateway)) == {200}
