"""A SIPp PBX behind a trunk: inbound calls from its trusted address reach registered users
without a challenge; users' calls to numbers matching the trunk reach it, prefix stripped."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.gateway import GatewayFactory
from tests.interop.test_proxy_sipp import DOMAIN
from tests.support.ports import free_udp_ports
from tests.support.sipp import (
    Sipp,
    free_port,
    messages,
    received_requests,
    register_then_serve,
    run_sipp,
)

PBX_ADDRESS = "127.0.0.2"  # another loopback address, so that only the PBX is trusted


def trunk_config(path: Path, pbx_port: int) -> str:
    path.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "{PBX_ADDRESS}:{pbx_port}"\n'
        'match = "9[0-9]{3,}"\n'
        'strip_prefix = "9"\n'
        f'trusted_sources = ["{PBX_ADDRESS}"]\n'
    )
    return str(path)


async def test_inbound_call_from_trusted_pbx_reaches_a_registered_user(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    config = trunk_config(tmp_path / "trunk.toml", free_port("udp"))
    gateway = await gateway_factory(users={"bob": "bob-secret"}, domain=DOMAIN,
                                    transports=("udp",), extra_args=["--config", config])
    callee = await register_then_serve(gateway, "bob", "uas_answer.xml")
    pbx = await run_sipp(
        "uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="bob",
        keys={"domain": DOMAIN, "caller": "0612345678"}, call_duration_ms=300, timeout=15,
        media_port=free_udp_ports(4), extra_args=["-i", PBX_ADDRESS], name="pbx-inbound",
    )
    pbx.assert_success()
    answered = await callee.wait()
    answered.assert_success()
    assert "SIP/2.0 407" not in messages(pbx) and "SIP/2.0 401" not in messages(pbx)
    invite = received_requests(answered, "INVITE")[0]
    assert "From: <sip:0612345678@example.test>" in invite
    assert f"Via: SIP/2.0/UDP {PBX_ADDRESS}:" in invite


async def test_untrusted_caller_cannot_use_the_trunk_identity(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    config = trunk_config(tmp_path / "trunk.toml", free_port("udp"))
    gateway = await gateway_factory(users={"bob": "bob-secret"}, domain=DOMAIN,
                                    transports=("udp",), extra_args=["--config", config])
    stranger = await run_sipp(
        "uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="bob",
        keys={"domain": DOMAIN, "caller": "0612345678"}, timeout=10,
        media_port=free_udp_ports(4), name="untrusted-inbound",
    )
    assert stranger.failed_calls == 1, stranger.describe()
    assert "SIP/2.0 407" in messages(stranger)


async def test_user_dials_a_number_and_reaches_the_pbx_with_prefix_stripped(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx_port = free_port("udp")
    config = trunk_config(tmp_path / "trunk.toml", pbx_port)
    pbx = await Sipp.start("uas_answer.xml", port=pbx_port, timeout=15,
                           media_port=free_udp_ports(4), extra_args=["-i", PBX_ADDRESS],
                           name="pbx-outbound")
    gateway = await gateway_factory(users={"alice": "alice-secret"}, domain=DOMAIN,
                                    transports=("udp",), extra_args=["--config", config])
    caller = await run_sipp(
        "uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="90155512345",
        auth=("alice", "alice-secret"), keys={"domain": DOMAIN}, call_duration_ms=300,
        timeout=15, media_port=free_udp_ports(4), name="alice-outbound",
    )
    caller.assert_success()
    answered = await pbx.wait()
    answered.assert_success()
    invite = received_requests(answered, "INVITE")[0]
    assert invite.startswith(f"INVITE sip:0155512345@{PBX_ADDRESS}:{pbx_port} SIP/2.0") or \
        f"\nINVITE sip:0155512345@{PBX_ADDRESS}:{pbx_port} SIP/2.0" in invite
    assert "Proxy-Authorization" not in invite
    assert received_requests(answered, "BYE")
