"""The gateway fixture: a real `python -m gateway run` on free ports, with real clients."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.support.jssip import JsSipAgent
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.sipp import run_sipp


async def test_users_register_over_udp_and_ws_and_wrong_password_is_refused(
    gateway: GatewayProcess,
) -> None:
    phone = await PjsuaPhone.start("fixture-alice")
    browser = await JsSipAgent.start("fixture-bob")
    intruder = await PjsuaPhone.start("fixture-intruder")
    try:
        registered = await phone.register("127.0.0.1", gateway.port("udp"), "alice",
                                          gateway.users["alice"], gateway.domain)
        assert registered["code"] == 200
        outcome = await browser.register(gateway.ws_url, f"sip:bob@{gateway.domain}",
                                         gateway.users["bob"])
        assert (outcome["outcome"], outcome["status"]) == ("registered", 200)
        refused = await intruder.register("127.0.0.1", gateway.port("udp"), "alice", "wrong",
                                          gateway.domain)
        assert refused["code"] in (401, 403)
    finally:
        await phone.stop()
        await browser.stop()
        await intruder.stop()
    assert "ws2sip ready" in gateway.log_text()


async def test_restart_keeps_ports_and_users(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(users={"carol": "carol-secret"}, transports=("tcp",))
    assert (gateway.udp_port, gateway.ws_port) == (None, None)
    first_pid = gateway.process.pid if gateway.process else None
    tcp_port = gateway.port("tcp")
    await gateway.restart()
    assert gateway.tcp_port == tcp_port
    assert gateway.process is not None and gateway.process.pid != first_pid
    phone = await PjsuaPhone.start("fixture-carol", transport="tcp")
    try:
        registered = await phone.register("127.0.0.1", tcp_port, "carol", "carol-secret",
                                          gateway.domain, transport="tcp")
        assert registered["code"] == 200
    finally:
        await phone.stop()
    await gateway.stop()
    assert gateway.returncode is not None


async def test_users_can_live_in_redis(gateway_factory: GatewayFactory, redis_url: str) -> None:
    gateway = await gateway_factory(users={"dave": "dave-secret"}, redis_url=redis_url,
                                    node_id="node-a", transports=("udp",))
    phone = await PjsuaPhone.start("fixture-dave")
    try:
        registered = await phone.register("127.0.0.1", gateway.port("udp"), "dave", "dave-secret",
                                          gateway.domain)
        assert registered["code"] == 200
    finally:
        await phone.stop()


async def test_a_gateway_that_cannot_start_fails_with_its_log(
    gateway_factory: GatewayFactory,
) -> None:
    with pytest.raises(RuntimeError, match="exited with"):
        await gateway_factory(extra_args=["--log-level", "nonsense"])


async def test_sipp_scenarios_answer_the_gateways_challenges(gateway: GatewayProcess) -> None:
    """The auth branches of register_uac.xml and uac_call.xml, which only a real registrar and
    proxy exercise: sipp registers alice, then calls bob (a pjsua phone) through the gateway."""
    registered = await run_sipp(
        "register_uac.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="alice",
        auth=("alice", gateway.users["alice"]),
        keys={"domain": gateway.domain, "expires": "60"}, timeout=10, name="gw-register",
    )
    registered.assert_success()
    bob = await PjsuaPhone.start("fixture-sipp-callee", auto_answer=200)
    try:
        assert (await bob.register("127.0.0.1", gateway.port("udp"), "bob", gateway.users["bob"],
                                   gateway.domain))["code"] == 200
        call = await run_sipp(
            "uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="bob",
            auth=("alice", gateway.users["alice"]), keys={"domain": gateway.domain},
            call_duration_ms=500, timeout=20, name="gw-call",
        )
        call.assert_success()
        assert "SIP/2.0 407" in call.message_log_path.read_text()
        await bob.wait_for("call_state", state="CONFIRMED")
        await bob.wait_for("call_state", state="DISCONNECTED")
    finally:
        await bob.stop()
