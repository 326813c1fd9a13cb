"""Trunk trust (issue 14, Medium 8): trusted_sources match transport, address (CIDR) and port,
and never a WebSocket flow, so browsers sharing the PBX's address (one NAT, a reverse proxy on
the PBX's host) are challenged like everyone else."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from gateway.config import ConfigError, TrustedSource, load_config
from sip.message import Request
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway.test_proxy_dialog_relay import UdpParty, browser
from tests.gateway.test_proxy_negative import DOMAIN, users, write_config
from tests.sip.core_peer import RawUdpPeer
from tests.support.ws_sip import WsSipUa


def test_trusted_source_forms() -> None:
    plain = TrustedSource.parse("10.0.0.20")
    assert plain.matches("udp", "10.0.0.20", 5060) and plain.matches("tls", "10.0.0.20", 1)
    assert not plain.matches("udp", "10.0.0.21", 5060)
    exact = TrustedSource.parse("udp:192.0.2.10:5060")
    assert exact.matches("udp", "192.0.2.10", 5060)
    assert not exact.matches("udp", "192.0.2.10", 5061)
    assert not exact.matches("tcp", "192.0.2.10", 5060)
    network = TrustedSource.parse("10.0.0.0/24")
    assert network.matches("tcp", "10.0.0.254", 40000)
    assert not network.matches("tcp", "10.0.1.1", 40000)
    v6 = TrustedSource.parse("tls:[2001:db8::/64]:5061")
    assert v6.matches("tls", "2001:db8::7", 5061) and not v6.matches("tls", "2001:db9::7", 5061)
    assert TrustedSource.parse("2001:db8::1").matches("udp", "2001:db8::1", 5060)
    assert not plain.matches("udp", "not-an-ip", 5060)


@pytest.mark.parametrize("bad", ["ws:10.0.0.1", "10.0.0.1:0", "10.0.0.1:http", "pbx.example",
                                 "10.0.0.0/33", "udp:[2001:db8::1]x"])
def test_unusable_trusted_sources_are_refused_with_the_setting(tmp_path: Path, bad: str) -> None:
    config = write_config(tmp_path / "bad.toml", (
        f'[[trunks]]\nname = "pbx"\naddress = "10.0.0.20:5060"\ntrusted_sources = ["{bad}"]\n'))
    with pytest.raises(ConfigError, match="trusted source"):
        load_config(config, {})


async def udp_invite(gateway: GatewayProcess, source: str = "127.0.0.1",
                     peer: RawUdpPeer | None = None) -> UdpParty:
    """An INVITE to bob with no credentials from a UDP socket on `source`."""
    assert gateway.udp_port is not None
    caller = UdpParty(peer or await RawUdpPeer.open(source), ("127.0.0.1", gateway.udp_port),
                      "pbx", call_id=secrets.token_hex(8), remote_uri=f"sip:bob@{DOMAIN}")
    caller.send(caller.text("INVITE", f"sip:bob@{DOMAIN}", cseq=1, from_tag="t", to_tag=None,
                            from_uri="sip:0612345678@pbx.example"))
    return caller


async def reaches_bob_unchallenged(caller: UdpParty, bob: WsSipUa) -> Request:
    invite = await bob.next_request("INVITE")
    assert invite.call_id == caller.call_id
    await bob.send(invite.response(486, to_tag="bob"))
    assert (await caller.final("INVITE", 1)).status == 486
    return invite


async def test_plain_ip_trust_never_covers_websocket_clients(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "trunk.toml", (
        '[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:5999"\ntrusted_sources = ["127.0.0.1"]\n'
    ))
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--config", config])
    bob = await browser(gateway, "bob")
    intruder = await WsSipUa.connect(gateway.ws_url, domain=DOMAIN)
    caller: UdpParty | None = None
    try:
        # A browser on the PBX's address, with no (or a wrong) password: challenged.
        await intruder.send_text(intruder.request_text(
            "INVITE", f"sip:bob@{DOMAIN}", from_user="0612345678", to_user="bob",
            call_id=secrets.token_hex(8), cseq=1))
        assert (await intruder.response()).status == 407
        assert not bob.requests
        # The PBX itself, over UDP from that address: trusted as before (old plain-IP form).
        caller = await udp_invite(gateway)
        await reaches_bob_unchallenged(caller, bob)
    finally:
        if caller is not None:
            caller.peer.close()
        await intruder.close()
        await bob.close()


async def test_trust_by_transport_port_and_cidr(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx = await RawUdpPeer.open()
    config = write_config(tmp_path / "trunk.toml", (
        '[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:5999"\n'
        f'trusted_sources = ["udp:127.0.0.1:{pbx.address[1]}", "127.0.0.4/30"]\n'
    ))
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--config", config])
    bob = await browser(gateway, "bob")
    callers: list[UdpParty] = []
    try:
        callers.append(await udp_invite(gateway, peer=pbx))
        await reaches_bob_unchallenged(callers[-1], bob)
        callers.append(await udp_invite(gateway, "127.0.0.5"))  # within 127.0.0.4/30
        await reaches_bob_unchallenged(callers[-1], bob)
        # Same address as the PBX, another port: a stranger.
        callers.append(await udp_invite(gateway))
        assert (await callers[-1].final("INVITE", 1)).status == 407
        callers.append(await udp_invite(gateway, "127.0.0.8"))  # outside the range
        assert (await callers[-1].final("INVITE", 1)).status == 407
        assert len([r for r in bob.requests if r.method == "INVITE"]) == 2
    finally:
        for caller in callers:
            caller.peer.close()
        await bob.close()
