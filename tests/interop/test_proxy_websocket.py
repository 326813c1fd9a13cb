"""Calls with WebSocket clients through the proxy.

The clients are the hand-written SIP-over-WebSocket UA of tests/support/ws_sip.py, which behaves
on the wire as JsSIP does: `.invalid` Via and Contact hosts, Outbound-style registration, a
browser's DTLS-SRTP/ICE SDP. It covers signalling only; media with real browsers is the lead's
browser suite. WebSocket ↔ WebSocket, WebSocket ↔ SIPp over UDP in both directions, and a call
between two gateway nodes sharing one Redis.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.interop.test_proxy_sipp import DOMAIN
from tests.support.healthz import gateway_metrics_url, metric_value
from tests.support.ports import free_udp_ports
from tests.support.sipp import messages, received_requests, register_then_serve, run_sipp
from tests.support.ws_sip import WsSipUa, browser_sdp, ws_contact


async def connect(gateway: GatewayProcess, user: str, password: str) -> WsSipUa:
    return await WsSipUa.connect(gateway.ws_url, user, password, domain=DOMAIN)


async def register_like_jssip(client: WsSipUa) -> None:
    """REGISTER with an Outbound-style Contact (instance, reg-id, expires) as JsSIP sends it."""
    contact = ws_contact(str(uuid.uuid4()), 1, user=client.user, host=client.host)
    response = await client.register(contacts=[f"{contact};expires=600"], expires=None)
    assert response.status == 200, f"REGISTER {client.user}: {response.status}"


async def ws_gateway(factory: GatewayFactory) -> GatewayProcess:
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    return await factory(users=users, domain=DOMAIN, transports=("udp", "ws"))


async def test_two_websocket_clients_call_each_other_and_the_callee_hangs_up(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await ws_gateway(gateway_factory)
    alice = await connect(gateway, "alice", gateway.users["alice"])
    bob = await connect(gateway, "bob", gateway.users["bob"])
    try:
        await register_like_jssip(alice)
        await register_like_jssip(bob)
        offer = browser_sdp("actpass")
        answer = browser_sdp("active")
        calling = asyncio.create_task(alice.call("bob", offer))
        invite, bob_dialog = await bob.answer(answer)
        final, alice_dialog = await calling
        assert final.status == 200 and alice_dialog is not None
        # Browser to browser: the SDP passes untouched both ways.
        assert invite.body.decode() == offer
        assert final.body.decode() == answer
        assert invite.uri == f"sip:bob@{bob.host};transport=ws"
        assert all("ws2sip-flow=" in route for route in invite.get_all("record-route"))
        bye_relayed = asyncio.create_task(alice.take_bye())
        assert (await bob.hang_up(bob_dialog)).status == 200
        bye = await bye_relayed
        assert bye.call_id == invite.call_id
    finally:
        await alice.close()
        await bob.close()


async def test_websocket_client_calls_a_udp_phone(gateway_factory: GatewayFactory) -> None:
    gateway = await ws_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "uas_answer.xml")
    alice = await connect(gateway, "alice", gateway.users["alice"])
    try:
        await register_like_jssip(alice)
        final, dialog = await alice.call("bob", browser_sdp("actpass"))
        assert final.status == 200 and dialog is not None
        assert (await alice.hang_up(dialog)).status == 200
    finally:
        await alice.close()
    answered = await callee.wait()
    answered.assert_success()
    invite = received_requests(answered, "INVITE")[0]
    # Two Record-Route entries: the transport changes from WebSocket to UDP.
    assert invite.count("Record-Route:") == 2
    assert f"sip:127.0.0.1:{gateway.udp_port};transport=udp;lr" in invite
    assert received_requests(answered, "BYE")


async def test_udp_phone_calls_a_websocket_client_which_hangs_up(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await ws_gateway(gateway_factory)
    bob = await connect(gateway, "bob", gateway.users["bob"])
    try:
        await register_like_jssip(bob)
        caller = asyncio.create_task(run_sipp(
            "proxy_uac_callee_hangs_up.xml", remote=f"127.0.0.1:{gateway.udp_port}",
            service="bob", auth=("alice", gateway.users["alice"]), keys={"domain": DOMAIN},
            timeout=15, media_port=free_udp_ports(4), name="uac-to-ws",
        ))
        invite, dialog = await bob.answer(browser_sdp("active"))
        assert invite.uri == f"sip:bob@{bob.host};transport=ws"
        assert (await bob.hang_up(dialog)).status == 200
        result = await caller
        result.assert_success()
        assert received_requests(result, "BYE")
    finally:
        await bob.close()


async def test_call_between_users_on_two_nodes_sharing_redis(
    gateway_factory: GatewayFactory, redis_url: str,
) -> None:
    secret = secrets.token_hex(16)
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    node_a = await gateway_factory(users=users, domain=DOMAIN, transports=("udp", "tcp"),
                                   redis_url=redis_url, node_id="node-a",
                                   extra_args=["--auth-secret", secret])
    # A short authentication deadline on node B: node A's TCP connection, which never sends
    # digest, must be kept for its hop tokens, through the call and its BYE.
    node_b = await gateway_factory(domain=DOMAIN, transports=("udp", "tcp", "ws"),
                                   redis_url=redis_url, node_id="node-b",
                                   extra_args=["--auth-secret", secret,
                                               "--unauthenticated-timeout", "1"])
    bob = await connect(node_b, "bob", users["bob"])
    try:
        await register_like_jssip(bob)
        caller = asyncio.create_task(run_sipp(
            "uac_call.xml", remote=f"127.0.0.1:{node_a.udp_port}", service="bob",
            auth=("alice", users["alice"]), keys={"domain": DOMAIN}, call_duration_ms=2000,
            timeout=15, media_port=free_udp_ports(4), name="alice-on-node-a",
        ))
        invite, _ = await bob.answer(browser_sdp("active"))
        bye = await bob.take_bye()
        result = await caller
        result.assert_success()
    finally:
        await bob.close()
    # Node A relayed to node B over the nodes' internal TCP address (A's Via below B's), and B
    # delivered on bob's WebSocket.
    vias = invite.get_all("via")
    assert len(vias) == 3, vias
    assert vias[0].startswith("SIP/2.0/WS")
    assert vias[1].startswith(f"SIP/2.0/TCP 127.0.0.1:{node_a.tcp_port};")
    assert bye.call_id == invite.call_id
    assert "SIP/2.0 200" in messages(result)
    assert await metric_value(gateway_metrics_url(node_b),
                              "ws2sip_unauthenticated_closed_total") == 0
