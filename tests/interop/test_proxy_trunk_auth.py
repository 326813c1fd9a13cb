"""A PBX that authenticates the gateway with digest (an Asterisk endpoint with `auth=`): the
gateway answers the challenge with the trunk's credentials, and keeps the dialog's CSeq space
consistent toward the PBX for the ACK and BYE that follow."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures.gateway import GatewayFactory
from tests.support.ports import free_udp_ports
from tests.support.sipp import (
    Sipp,
    SippResult,
    free_port,
    messages,
    received_requests,
    run_sipp,
)

DOMAIN = "example.test"
PBX_ADDRESS = "127.0.0.2"


def cseq_of(block: str) -> int:
    match = re.search(r"^CSeq:\s*(\d+)", block, re.M | re.I)
    assert match, block
    return int(match[1])


async def call_challenging_pbx(
    gateway_factory: GatewayFactory, tmp_path: Path, trunk_password: str, name: str
) -> tuple[SippResult, SippResult]:
    """alice dials 9… through a trunk whose PBX demands digest credentials ws2sip/trunk-secret;
    returns (caller result, PBX result)."""
    pbx_port = free_port("udp")
    config = tmp_path / "trunk.toml"
    config.write_text(
        "[[trunks]]\n"
        'name = "pbx"\n'
        f'address = "{PBX_ADDRESS}:{pbx_port}"\n'
        'match = "9[0-9]{3,}"\n'
        'strip_prefix = "9"\n'
        'username = "ws2sip"\n'
        f'password = "{trunk_password}"\n'
    )
    pbx = await Sipp.start(
        "pbx_challenging_uas.xml", port=pbx_port, timeout=15, media_port=free_udp_ports(4),
        extra_args=["-i", PBX_ADDRESS], name=f"pbx-{name}",
        keys={"domain": "pbx.test", "user": "ws2sip", "password": "trunk-secret"},
    )
    gateway = await gateway_factory(users={"alice": "alice-secret"}, domain=DOMAIN,
                                    transports=("udp",), extra_args=["--config", str(config)])
    caller = await run_sipp(
        "uac_call.xml", remote=f"127.0.0.1:{gateway.udp_port}", service="90155512345",
        auth=("alice", "alice-secret"), keys={"domain": DOMAIN}, call_duration_ms=300,
        timeout=15, media_port=free_udp_ports(4), name=f"alice-{name}",
    )
    return caller, await pbx.wait()


async def test_gateway_answers_the_trunk_challenge_and_keeps_cseq_order(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    caller, answered = await call_challenging_pbx(
        gateway_factory, tmp_path, "trunk-secret", "auth-ok"
    )
    caller.assert_success()
    answered.assert_success()
    assert "SIP/2.0 403" not in messages(answered)
    invites = received_requests(answered, "INVITE")
    assert len(invites) == 2 and "Authorization: Digest" in invites[1]
    assert 'username="ws2sip"' in invites[1]
    authenticated = cseq_of(invites[1])
    assert authenticated == cseq_of(invites[0]) + 1
    acks = received_requests(answered, "ACK")
    assert cseq_of(acks[-1]) == authenticated, "ACK for the 2xx must carry the INVITE's CSeq"
    byes = received_requests(answered, "BYE")
    assert byes and cseq_of(byes[0]) > authenticated
    # The caller never saw the PBX's challenge: the gateway answered it.
    assert "realm=\"pbx.test\"" not in messages(caller)


async def test_wrong_trunk_password_fails_the_call(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    caller, _ = await call_challenging_pbx(gateway_factory, tmp_path, "wrong", "auth-wrong")
    assert caller.failed_calls == 1, caller.describe()
    assert "SIP/2.0 403" in messages(caller)
