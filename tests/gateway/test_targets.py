"""Target selection (gateway.targets) in-process: a registered phone, a user who is not
registered, a stranger, a dialled number for a trunk, relaying refused, and the call limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Trunk
from gateway.dialogs import Dialog
from gateway.routing import Destination
from sip.errors import SipError
from sip.message import Request
from sip.resolver import Target
from tests.sip.core_peer import CorePeer
from tests.support.signalling_node import DOMAIN, register, signalling_node

PBX = Trunk("pbx", "192.0.2.10:5070", match=r"0\d+", strip_prefix="0", max_calls=1)


def invite(uri: str) -> Request:
    return Request("INVITE", uri, [
        ("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKtargets"),
        ("from", "From", f"<sip:alice@{DOMAIN}>;tag=a"), ("to", "To", f"<{uri}>"),
        ("call-id", "Call-ID", "targets-call"), ("cseq", "CSeq", "1 INVITE")])


def address_of(destination: Destination) -> tuple[str, str, int]:
    target = destination.target
    assert isinstance(target, Target), target
    return target.transport, target.host, target.port


async def test_registered_phone_is_reached_at_its_source_address(tmp_path: Path) -> None:
    async with signalling_node(tmp_path, users={"bob": "pw-b"}) as node:
        phone = CorePeer()
        await phone.start()
        try:
            assert (await register(phone, node, "bob")).status == 200
            destinations, callee = await node.signalling.targets.select(
                invite(f"sip:bob@{DOMAIN}"), None)
            host, port = phone.address("udp")
            assert callee == f"sip:bob@{DOMAIN}"
            assert [(d.ruri, address_of(d), d.side, d.aor) for d in destinations] == [
                (f"sip:bob@{host}:{port}", ("udp", host, port), "plain", f"sip:bob@{DOMAIN}")]
        finally:
            await phone.close()


@pytest.mark.parametrize(("uri", "status"), [
    (f"sip:bob@{DOMAIN}", 480),  # a user, not registered
    (f"sip:nobody@{DOMAIN}", 404),
    ("sip:bob@elsewhere.example", 403),  # no trunk matches: no open relay
])
async def test_unreachable_and_relaying_are_refused(
    tmp_path: Path, uri: str, status: int
) -> None:
    async with signalling_node(tmp_path, users={"bob": "pw-b"}, trunks=(PBX,)) as node:
        with pytest.raises(SipError) as refused:
            await node.signalling.targets.select(invite(uri), None)
        assert refused.value.status == status


async def test_dialled_number_goes_to_the_trunk_but_never_from_a_trunk(tmp_path: Path) -> None:
    async with signalling_node(tmp_path, trunks=(PBX,)) as node:
        targets = node.signalling.targets
        destinations, callee = await targets.select(invite("sip:0555123@elsewhere.example"), None)
        assert callee is None
        assert [(d.ruri, address_of(d), d.trunk) for d in destinations] == [
            ("sip:555123@192.0.2.10:5070", ("udp", "192.0.2.10", 5070), PBX)]
        with pytest.raises(SipError) as refused:
            await targets.select(invite("sip:0555123@elsewhere.example"), PBX)
        assert refused.value.status == 403


async def test_call_limits_of_users_and_trunks(tmp_path: Path) -> None:
    async with signalling_node(tmp_path, trunks=(PBX,), max_calls_per_user=1) as node:
        targets = node.signalling.targets
        node.signalling.dialogs.add(
            Dialog("busy-call", "INVITE", caller=f"sip:alice@{DOMAIN}",
                   callee=f"sip:bob@{DOMAIN}", trunk="pbx"), 60.0)
        request = invite(f"sip:bob@{DOMAIN}")
        for caller, callee, trunk, status in [
            (f"sip:alice@{DOMAIN}", None, None, 503),
            (f"sip:carol@{DOMAIN}", f"sip:bob@{DOMAIN}", None, 486),
            (f"sip:carol@{DOMAIN}", None, PBX, 503),
        ]:
            with pytest.raises(SipError) as refused:
                targets.check_limits(request, caller, callee, trunk)
            assert refused.value.status == status
        targets.check_limits(request, f"sip:carol@{DOMAIN}", f"sip:dave@{DOMAIN}", None)
