"""Asserted identities (issue 14, Medium 6): P-Asserted-Identity, P-Preferred-Identity and
Remote-Party-ID from users never reach anyone; a trusted trunk's pass; toward a trunk the
gateway asserts the authenticated caller itself (RFC 3325 §9.1)."""

from __future__ import annotations

import secrets
from pathlib import Path

from sip.digest import build_authorization, select_challenge
from sip.message import Request
from tests.fixtures.gateway import GatewayFactory
from tests.gateway.test_proxy_dialog_relay import UdpParty, browser, open_party
from tests.gateway.test_proxy_negative import DOMAIN, users, write_config
from tests.sip.core_peer import RawUdpPeer

FORGED = (
    'P-Asserted-Identity: "Your Bank" <sip:security@bank.example>\r\n'
    "P-Preferred-Identity: <sip:ceo@bank.example>\r\n"
    'Remote-Party-ID: "Your Bank" <sip:security@bank.example>;party=calling;screen=yes\r\n'
)


async def next_request(peer: RawUdpPeer, method: str) -> Request:
    while True:
        message = await peer.next_message(timeout=10.0)
        if isinstance(message, Request) and message.method == method:
            return message


async def invite_as_user(caller: UdpParty, ruri: str, password: str) -> None:
    """An authenticated INVITE carrying forged identity headers (no answer awaited)."""
    caller.call_id, caller.local_tag, caller.remote_uri = (
        secrets.token_hex(8), secrets.token_hex(4), ruri)
    caller.send(caller.text("INVITE", ruri, cseq=1, from_tag=caller.local_tag, to_tag=None,
                            extra=FORGED))
    challenge = await caller.final("INVITE", 1)
    assert challenge.status == 407
    credentials = build_authorization(
        select_challenge(challenge.get_all("proxy-authenticate")), method="INVITE", uri=ruri,
        username=caller.user, password=password)
    caller.send(caller.text("INVITE", ruri, cseq=2, from_tag=caller.local_tag, to_tag=None,
                            extra=FORGED + f"Proxy-Authorization: {credentials}\r\n"))


def identities(request: Request) -> dict[str, list[str]]:
    return {name: request.get_all(name) for name in
            ("p-asserted-identity", "p-preferred-identity", "remote-party-id")}


async def test_users_cannot_assert_identities_and_trunks_get_the_authenticated_one(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx_peer = await RawUdpPeer.open()
    pbx_port = pbx_peer.address[1]
    config = write_config(tmp_path / "trunk.toml", (
        f'[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:{pbx_port}"\n'
        f'match = "9[0-9]+"\nstrip_prefix = "9"\ntrusted_sources = ["udp:127.0.0.1:{pbx_port}"]\n'
    ))
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--config", config])
    bob = await browser(gateway, "bob")
    alice = await open_party(gateway, "alice")
    assert gateway.udp_port is not None
    pbx = UdpParty(pbx_peer, ("127.0.0.1", gateway.udp_port), "pbx")
    try:
        # alice → trunk: her own forged headers gone, the gateway asserts who she is.
        await invite_as_user(alice, f"sip:9555123@{DOMAIN}", gateway.users["alice"])
        at_pbx = await next_request(pbx_peer, "INVITE")
        assert identities(at_pbx) == {"p-asserted-identity": [f"<sip:alice@{DOMAIN}>"],
                                      "p-preferred-identity": [], "remote-party-id": []}
        pbx_peer.send(at_pbx.response(486, to_tag="pbx").to_bytes(), pbx.gateway)
        assert (await alice.final("INVITE", 2)).status == 486

        # alice → bob (a user): nothing asserted reaches him.
        await invite_as_user(alice, f"sip:bob@{DOMAIN}", gateway.users["alice"])
        at_bob = await bob.next_request("INVITE")
        assert identities(at_bob) == {"p-asserted-identity": [], "p-preferred-identity": [],
                                      "remote-party-id": []}
        await bob.send(at_bob.response(486, to_tag="bob"))

        # The trusted trunk → bob: its assertion (the PSTN caller) passes unchanged.
        pbx.call_id, pbx.remote_uri = secrets.token_hex(8), f"sip:bob@{DOMAIN}"
        pbx.send(pbx.text("INVITE", f"sip:bob@{DOMAIN}", cseq=1, from_tag="pbx1", to_tag=None,
                          extra="P-Asserted-Identity: <sip:+15551234@pbx.example>\r\n"))
        from_trunk = await bob.next_request("INVITE")
        assert from_trunk.call_id == pbx.call_id
        assert from_trunk.get_all("p-asserted-identity") == ["<sip:+15551234@pbx.example>"]
        await bob.send(from_trunk.response(486, to_tag="bob2"))
    finally:
        alice.peer.close()
        pbx_peer.close()
        await bob.close()
