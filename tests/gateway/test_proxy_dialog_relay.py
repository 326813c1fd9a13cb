"""In-dialog requests are relayed only between a dialog's two recorded parties, and Record-Route
flow tokens open nothing outside their dialog (issue 14, High 1 and 2).

The call is the attack's setup: alice, a hand-written UDP phone (authenticated), calls bob, a
browser-like client over WebSocket. A stranger on another UDP socket knows the Call-ID and even
both tags, and names another host (a "sink" socket) in its Request-URI.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway.test_proxy_negative import DOMAIN, SILENCE, users
from tests.sip.core_peer import RawUdpPeer
from tests.support.ws_sip import WsSipUa

WAIT = 10.0


@dataclass
class UdpParty:
    """A UDP user agent holding one dialog, writing every request by hand."""

    peer: RawUdpPeer
    gateway: tuple[str, int]
    user: str
    call_id: str = ""
    local_tag: str = ""
    remote_tag: str = ""
    remote_uri: str = ""
    route_set: Sequence[str] = ()
    cseq: int = 1

    @property
    def contact(self) -> str:
        return f"sip:{self.user}@{self.peer.address[0]}:{self.peer.address[1]}"

    def text(self, method: str, ruri: str, *, cseq: int, from_tag: str, to_tag: str | None,
             from_uri: str | None = None, to_uri: str | None = None,
             routes: Sequence[str] = (), extra: str = "") -> str:
        host, port = self.peer.address
        to = f"<{to_uri or self.remote_uri}>" + (f";tag={to_tag}" if to_tag else "")
        route_lines = "".join(f"Route: {route}\r\n" for route in routes)
        return (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"{route_lines}"
            "Max-Forwards: 70\r\n"
            f"From: <{from_uri or f'sip:{self.user}@{DOMAIN}'}>;tag={from_tag}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"Contact: <{self.contact}>\r\n"
            f"{extra}"
            "Content-Length: 0\r\n\r\n"
        )

    def send(self, text: str) -> None:
        self.peer.send(text, self.gateway)

    async def final(self, method: str, cseq: int) -> Response:
        while True:
            message = await self.peer.next_message(timeout=WAIT)
            if isinstance(message, Response) and message.cseq.number == cseq and \
                    message.cseq.method == method and message.status >= 200:
                return message

    async def call(self, callee: str, password: str) -> Response:
        """INVITE callee, answer the 407, ACK the 2xx; the dialog is then held here."""
        self.call_id, self.local_tag = secrets.token_hex(8), secrets.token_hex(4)
        ruri = self.remote_uri = f"sip:{callee}@{DOMAIN}"
        self.send(self.text("INVITE", ruri, cseq=1, from_tag=self.local_tag, to_tag=None))
        challenge = await self.final("INVITE", 1)
        assert challenge.status == 407
        self.send(self._ack_text(challenge, ruri))
        credentials = build_authorization(
            select_challenge(challenge.get_all("proxy-authenticate")), method="INVITE",
            uri=ruri, username=self.user, password=password)
        self.send(self.text("INVITE", ruri, cseq=2, from_tag=self.local_tag, to_tag=None,
                            extra=f"Proxy-Authorization: {credentials}\r\n"))
        ok = await self.final("INVITE", 2)
        assert ok.status == 200, f"{ok.status} {ok.reason}"
        self.cseq = 2
        self.remote_tag = ok.to.tag or ""
        self.route_set = list(reversed(ok.get_all("record-route")))
        self.send(self.text("ACK", ok.contacts[0].uri_text, cseq=2, from_tag=self.local_tag,
                            to_tag=self.remote_tag, routes=self.route_set))
        return ok

    def _ack_text(self, response: Response, ruri: str) -> str:
        return (
            f"ACK {ruri} SIP/2.0\r\nVia: {response.get_all('via')[0]}\r\nMax-Forwards: 70\r\n"
            f"From: {response.get('from')}\r\nTo: {response.get('to')}\r\n"
            f"Call-ID: {response.call_id}\r\nCSeq: {response.cseq.number} ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        )

    async def next_request(self, method: str) -> Request:
        while True:
            message = await self.peer.next_message(timeout=WAIT)
            if isinstance(message, Request) and message.method == method:
                return message


async def open_party(gateway: GatewayProcess, user: str) -> UdpParty:
    assert gateway.udp_port is not None
    return UdpParty(await RawUdpPeer.open(), ("127.0.0.1", gateway.udp_port), user)


async def browser(gateway: GatewayProcess, user: str) -> WsSipUa:
    client = await WsSipUa.connect(gateway.ws_url, user, gateway.users[user], domain=DOMAIN)
    assert (await client.register()).status == 200
    return client


async def set_up_call(gateway: GatewayProcess) -> tuple[UdpParty, WsSipUa, Request]:
    """alice (UDP) calls bob (WebSocket), who answers; returns bob's view of the INVITE."""
    bob = await browser(gateway, "bob")
    alice = await open_party(gateway, "alice")
    answered = asyncio.create_task(bob.answer(""))
    await alice.call("bob", gateway.users["alice"])
    invite, _ = await answered
    return alice, bob, invite


def received(client: WsSipUa, method: str, call_id: str) -> list[Request]:
    return [r for r in client.requests if r.method == method and r.call_id == call_id]

def callee_request(method: str, initial: Request, callee: WsSipUa, tag: str) -> Request:
    """The callee's first in-dialog request (CSeq 1) toward the caller of `initial`, as it
    received it: to the caller's Contact through the recorded route, from the callee's tag."""
    request = Request(method, initial.contacts[0].uri_text)
    request.add("Via", f"SIP/2.0/WS {callee.host};branch=z9hG4bK{secrets.token_hex(8)}")
    for route in initial.get_all("record-route"):
        request.add("Route", route)
    request.add("Max-Forwards", "70")
    request.add("From", f"{initial.get('to')};tag={tag}")
    request.add("To", initial.get("from") or "")
    request.add("Call-ID", initial.call_id)
    request.add("CSeq", f"1 {method}")
    return request



async def test_strangers_in_dialog_requests_are_refused_and_never_relayed(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    alice, bob, invite = await set_up_call(gateway)
    stranger = await open_party(gateway, "mallory")
    stranger.call_id, stranger.remote_uri = alice.call_id, f"sip:x@{DOMAIN}"
    sink = await RawUdpPeer.open("127.0.0.5")
    elsewhere = f"sip:x@127.0.0.5:{sink.address[1]}"
    try:
        # A forged To-tag names no dialog the gateway made: 481.
        for cseq, method in enumerate(("MESSAGE", "INVITE", "OPTIONS", "INFO", "NOTIFY",
                                       "SUBSCRIBE"), start=10):
            stranger.send(stranger.text(method, elsewhere, cseq=cseq, from_tag="forged",
                                        to_tag="forged-too"))
            refused = await stranger.final(method, cseq)
            assert refused.status == 481, f"{method}: {refused.status} {refused.reason}"
        # Both tags right, but from neither party's address: 403, in both directions.
        as_alice = dict(from_tag=alice.local_tag, to_tag=alice.remote_tag,
                        from_uri=f"sip:alice@{DOMAIN}", to_uri=f"sip:bob@{DOMAIN}")
        as_bob = dict(from_tag=alice.remote_tag, to_tag=alice.local_tag,
                      from_uri=f"sip:bob@{DOMAIN}", to_uri=f"sip:alice@{DOMAIN}")
        stranger.send(stranger.text("MESSAGE", elsewhere, cseq=20, **as_alice))
        forged = await stranger.final("MESSAGE", 20)
        assert (forged.status, forged.reason) == (403, "Forbidden (not a party of this dialog)")
        stranger.send(stranger.text("BYE", alice.contact, cseq=21, **as_bob))
        forged_bye = await stranger.final("BYE", 21)
        assert forged_bye.status == 403
        stranger.send(stranger.text("ACK", elsewhere, cseq=22, **as_alice))
        assert await sink.nothing_within(SILENCE), "a stranger's request was relayed"
        assert await alice.peer.nothing_within(0.1), "a stranger's BYE reached alice"
        assert not received(bob, "BYE", alice.call_id)
        assert not received(bob, "MESSAGE", alice.call_id)
        assert len(received(bob, "ACK", alice.call_id)) == 1  # only alice's own

        # A real party's in-dialog request goes to the peer the dialog recorded, whatever its
        # Request-URI names.
        alice.send(alice.text("MESSAGE", elsewhere, cseq=3, from_tag=alice.local_tag,
                              to_tag=alice.remote_tag, routes=alice.route_set))
        assert (await alice.final("MESSAGE", 3)).status == 200
        message = await bob.next_request("MESSAGE")
        assert message.call_id == alice.call_id
        assert await sink.nothing_within(0.2)

        # And the call still ends normally from bob's side.
        await bob.send(callee_request("BYE", invite, bob, alice.remote_tag))
        at_alice = await alice.next_request("BYE")
        alice.peer.send(at_alice.response(200).to_bytes(), alice.gateway)
        assert (await bob.response()).status == 200
    finally:
        for peer in (alice.peer, stranger.peer, sink):
            peer.close()
        await bob.close()


async def test_a_record_route_flow_token_opens_nothing_outside_its_dialog(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    alice, bob, invite = await set_up_call(gateway)
    # The entry facing bob carries the token of bob's WebSocket; alice saw it in the 200.
    bob_route = next(route for route in alice.route_set if "ws2sip-flow=" in route)
    stranger = await open_party(gateway, "bank")
    try:
        for cseq, (method, call_id) in enumerate(
                [("MESSAGE", secrets.token_hex(8)), ("INVITE", secrets.token_hex(8)),
                 ("OPTIONS", secrets.token_hex(8)), ("MESSAGE", alice.call_id)], start=1):
            stranger.call_id = call_id
            stranger.send(stranger.text(
                method, invite.contacts[0].uri_text, cseq=cseq, from_tag=secrets.token_hex(4),
                to_tag=None, from_uri="sip:your-bank@bank.example", to_uri=f"sip:bob@{DOMAIN}",
                routes=[bob_route]))
            refused = await stranger.final(method, cseq)
            assert refused.status == 407, f"{method}: {refused.status} {refused.reason}"
        await asyncio.sleep(SILENCE)
        assert [r.method for r in bob.requests if r.call_id != alice.call_id] == []
        assert not received(bob, "MESSAGE", alice.call_id)
    finally:
        alice.peer.close()
        stranger.peer.close()
        await bob.close()



async def test_subscription_notify_from_the_notifier_passes_and_a_strangers_does_not(
    gateway_factory: GatewayFactory,
) -> None:
    """A NOTIFY from a tag the gateway never saw (the 200 to SUBSCRIBE had none, as a NOTIFY
    may precede it) is accepted from the SUBSCRIBE's own branch, and only from there."""
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    bob = await browser(gateway, "bob")  # answers the SUBSCRIBE 200 without a To-tag
    alice = await open_party(gateway, "alice")
    stranger = await open_party(gateway, "mallory")
    try:
        alice.call_id, alice.local_tag = secrets.token_hex(8), secrets.token_hex(4)
        ruri = alice.remote_uri = f"sip:bob@{DOMAIN}"
        event = "Event: presence\r\nExpires: 600\r\n"
        alice.send(alice.text("SUBSCRIBE", ruri, cseq=1, from_tag=alice.local_tag, to_tag=None,
                              extra=event))
        challenge = await alice.final("SUBSCRIBE", 1)
        assert challenge.status == 407
        credentials = build_authorization(
            select_challenge(challenge.get_all("proxy-authenticate")), method="SUBSCRIBE",
            uri=ruri, username="alice", password=gateway.users["alice"])
        alice.send(alice.text("SUBSCRIBE", ruri, cseq=2, from_tag=alice.local_tag, to_tag=None,
                              extra=event + f"Proxy-Authorization: {credentials}\r\n"))
        subscribe = await bob.next_request("SUBSCRIBE")
        assert (await alice.final("SUBSCRIBE", 2)).status == 200

        stranger.call_id, stranger.remote_uri = alice.call_id, f"sip:alice@{DOMAIN}"
        stranger.send(stranger.text("NOTIFY", alice.contact, cseq=1, from_tag="notifier",
                                    to_tag=alice.local_tag, from_uri=f"sip:bob@{DOMAIN}",
                                    extra="Event: presence\r\nSubscription-State: active\r\n"))
        assert (await stranger.final("NOTIFY", 1)).status == 481
        assert await alice.peer.nothing_within(SILENCE), "a stranger's NOTIFY reached alice"

        notify = callee_request("NOTIFY", subscribe, bob, "notifier")
        notify.add("Event", "presence")
        notify.add("Subscription-State", "active;expires=600")
        await bob.send(notify)
        at_alice = await alice.next_request("NOTIFY")
        alice.peer.send(at_alice.response(200).to_bytes(), alice.gateway)
        assert (await bob.response()).status == 200
    finally:
        alice.peer.close()
        stranger.peer.close()
        await bob.close()
