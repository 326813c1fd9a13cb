"""Calls through the gateway's proxy between SIPp callers and SIPp callees registered over UDP:
answer, hang-up from either side, re-INVITE, CANCEL, busy, no-answer timeout and forking."""

from __future__ import annotations

import re
import secrets

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.ports import free_udp_ports
from tests.support.sipp import (
    SippResult,
    messages,
    received_requests,
    register_then_serve,
    run_sipp,
)

DOMAIN = "example.test"


async def proxy_gateway(factory: GatewayFactory, *extra_args: str) -> GatewayProcess:
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob", "carol")}
    return await factory(users=users, domain=DOMAIN, transports=("udp",),
                         extra_args=list(extra_args))


async def call(gateway: GatewayProcess, scenario: str, callee: str, *, caller: str = "alice",
               timeout: float = 20.0, **options: object) -> SippResult:
    return await run_sipp(
        scenario, remote=f"127.0.0.1:{gateway.udp_port}", service=callee,
        auth=(caller, gateway.users[caller]), keys={"domain": DOMAIN}, timeout=timeout,
        name=f"uac-{caller}", media_port=free_udp_ports(4), **options,
    )


async def test_caller_reaches_registered_callee_and_hangs_up(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await proxy_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "uas_answer.xml")
    caller = await call(gateway, "uac_call.xml", "bob", call_duration_ms=300)
    caller.assert_success()
    answered = await callee.wait()
    answered.assert_success()
    invite = received_requests(answered, "INVITE")[0]
    # Forwarded to the binding, challenged credentials stripped, recorded on the route.
    assert f"INVITE sip:bob@127.0.0.1:{callee.port}" in invite
    assert "Proxy-Authorization" not in invite
    assert f"Record-Route: <sip:127.0.0.1:{gateway.udp_port};transport=udp;lr" in invite
    assert f"SIP/2.0/UDP 127.0.0.1:{gateway.udp_port};branch=z9hG4bK" in invite
    assert received_requests(answered, "BYE"), "the caller's BYE never reached the callee"
    assert "SIP/2.0 407" in messages(caller)


async def test_callee_hangs_up_along_the_record_route(gateway_factory: GatewayFactory) -> None:
    gateway = await proxy_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "proxy_uas_hangs_up.xml")
    caller = await call(gateway, "proxy_uac_callee_hangs_up.xml", "bob")
    caller.assert_success()
    (await callee.wait()).assert_success()
    bye = received_requests(caller, "BYE")
    assert bye, "the callee's BYE never reached the caller"
    assert f"SIP/2.0/UDP 127.0.0.1:{gateway.udp_port};branch=z9hG4bK" in bye[0]


async def test_reinvite_and_its_ack_are_relayed_in_dialog(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await proxy_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "proxy_uas_reinvite.xml")
    caller = await call(gateway, "proxy_uac_reinvite.xml", "bob")
    caller.assert_success()
    answered = await callee.wait()
    answered.assert_success()
    invites = received_requests(answered, "INVITE")
    assert len(invites) == 2
    assert "CSeq: 3 INVITE" in invites[1] and "a=sendonly" in invites[1]
    assert "a=recvonly" in messages(caller)


async def test_cancel_while_ringing_reaches_the_callee(gateway_factory: GatewayFactory) -> None:
    gateway = await proxy_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "proxy_uas_no_answer.xml")
    caller = await call(gateway, "uac_cancel.xml", "bob")
    caller.assert_success()
    cancelled = await callee.wait()
    cancelled.assert_success()
    assert received_requests(cancelled, "CANCEL")
    assert "SIP/2.0 487" in messages(caller)


async def test_busy_callee_gives_the_caller_486(gateway_factory: GatewayFactory) -> None:
    gateway = await proxy_gateway(gateway_factory)
    callee = await register_then_serve(gateway, "bob", "uas_busy.xml")
    caller = await call(gateway, "uac_call.xml", "bob", timeout=10)
    assert caller.failed_calls == 1, caller.describe()
    assert "SIP/2.0 486" in messages(caller)
    (await callee.wait()).assert_success()


async def test_unanswered_call_is_cancelled_after_invite_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await proxy_gateway(gateway_factory, "--invite-timeout", "2")
    callee = await register_then_serve(gateway, "bob", "proxy_uas_no_answer.xml")
    caller = await call(gateway, "uac_call.xml", "bob", timeout=15)
    assert caller.failed_calls == 1, caller.describe()
    assert re.search(r"SIP/2.0 (480|408) ", messages(caller)), caller.describe()
    cancelled = await callee.wait()
    cancelled.assert_success()
    assert received_requests(cancelled, "CANCEL")


async def test_call_forks_to_every_binding_and_the_loser_is_cancelled(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await proxy_gateway(gateway_factory)
    ringing = await register_then_serve(gateway, "bob", "proxy_uas_no_answer.xml", name="bob-desk")
    answering = await register_then_serve(gateway, "bob", "uas_answer.xml", name="bob-mobile")
    caller = await call(gateway, "uac_call.xml", "bob", call_duration_ms=300)
    caller.assert_success()
    answered = await answering.wait()
    answered.assert_success()
    loser = await ringing.wait()
    loser.assert_success()
    assert received_requests(loser, "INVITE") and received_requests(loser, "CANCEL")
    assert received_requests(answered, "BYE")
    assert not received_requests(loser, "BYE")
