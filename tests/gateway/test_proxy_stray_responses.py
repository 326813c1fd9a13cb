"""A 2xx that arrives after its transaction ended is relayed only when the gateway's top Via
branch is one it signed for the Via below it (issue 14, Medium 5): a forged 200 OK naming the
gateway on top and any host below is dropped, so the gateway is no reflector."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from gateway.routing import upstream_hop
from sip.branch import signed_branch
from sip.headers import Via
from sip.message import Response
from tests.fixtures.gateway import GatewayFactory
from tests.gateway.test_proxy_negative import DOMAIN, SILENCE, users
from tests.sip.core_peer import RawUdpPeer

AUTH_SECRET = "stray-response-test-secret"


def ok_text(top_branch: str, gateway_port: int, sink: tuple[str, int], call_id: str) -> str:
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{gateway_port};branch={top_branch}\r\n"
        f"Via: SIP/2.0/UDP {sink[0]}:{sink[1]};branch=z9hG4bKvictim;rport={sink[1]}"
        f";received={sink[0]}\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a\r\nTo: <sip:bob@{DOMAIN}>;tag=b\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        "Content-Type: text/plain\r\nContent-Length: 9\r\n\r\nreflected"
    )


def gateway_branch(call_id: str, upstream: str) -> str:
    """A branch as the gateway signs it, computed from the shared --auth-secret."""
    key = hmac.digest(AUTH_SECRET.encode(), b"ws2sip via branch", hashlib.sha256)
    material = upstream_hop(call_id, Via.parse(upstream))
    return f"{signed_branch(key, material)}.0123456789ab"


async def test_forged_stray_2xx_is_dropped_and_a_signed_one_goes_only_upstream(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp",),
                                    extra_args=["--auth-secret", AUTH_SECRET])
    assert gateway.udp_port is not None
    attacker = await RawUdpPeer.open()
    sink = await RawUdpPeer.open("127.0.0.5")
    elsewhere = await RawUdpPeer.open("127.0.0.6")
    try:
        call_id = secrets.token_hex(8)
        target = ("127.0.0.1", gateway.udp_port)
        # Unsigned, or signed for another upstream Via: nothing leaves the gateway.
        attacker.send(ok_text(f"z9hG4bK{secrets.token_hex(16)}", gateway.udp_port,
                              sink.address, call_id), target)
        signed_for_elsewhere = gateway_branch(
            call_id, f"SIP/2.0/UDP {elsewhere.address[0]}:{elsewhere.address[1]};"
                     f"branch=z9hG4bKvictim;rport={elsewhere.address[1]};"
                     f"received={elsewhere.address[0]}")
        attacker.send(ok_text(signed_for_elsewhere, gateway.udp_port, sink.address, call_id),
                      target)
        assert await sink.nothing_within(SILENCE), "a forged stray 2xx was reflected"
        assert await elsewhere.nothing_within(0.1)
        # A branch the gateway signed for this very upstream hop: relayed there, and only there.
        upstream = (f"SIP/2.0/UDP {sink.address[0]}:{sink.address[1]};branch=z9hG4bKvictim;"
                    f"rport={sink.address[1]};received={sink.address[0]}")
        attacker.send(ok_text(gateway_branch(call_id, upstream), gateway.udp_port,
                              sink.address, call_id), target)
        relayed = await sink.next_message(timeout=5.0)
        assert isinstance(relayed, Response) and relayed.status == 200
        assert len(relayed.vias) == 1 and relayed.call_id == call_id
        assert await attacker.nothing_within(0.1)
    finally:
        for peer in (attacker, sink, elsewhere):
            peer.close()
