"""Requests to GRUUs through a real gateway (in memory and on Redis) over WebSocket: alice has two
devices (instances A and B, one WebSocket each), bob calls.

Which device a call reached is read from what each device received; a request that could have
been forked to a device would reach its WebSocket before anything the gateway sent it later, so
each device's list of INVITEs, read after a round trip on its own WebSocket, is exact.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sip.message import Request
from sip.uri import SipUri
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway import test_websocket_edge as edge
from tests.gateway.test_websocket_edge import DOMAIN, ClientFactory
from tests.sip.core_peer import RawUdpPeer
from tests.support.ws_sip import WsSipUa, browser_sdp, ws_contact

WITH_GRUU = [("Supported", "path, gruu, outbound")]

backend_gateway = edge.backend_gateway
client_factory = edge.client_factory


@dataclass
class Device:
    ua: WsSipUa
    contact: str
    call_id: str
    public: str
    temporary: str
    cseq: int = 0  # of the last REGISTER sent (its digest retry)

    @property
    def contact_uri(self) -> str:
        return self.contact[1:self.contact.index(">")]

    def invites(self) -> list[str]:
        return [r.call_id for r in self.ua.requests if r.method == "INVITE" and r.to.tag is None]

    async def register(self, password: str, *, expires: int = 300,
                       call_id: str | None = None) -> None:
        self.call_id = call_id or self.call_id
        ok = await self.ua.register("alice", password, contacts=[self.contact],
                                    headers=WITH_GRUU, expires=expires, call_id=self.call_id,
                                    cseq=self.cseq + 1)
        assert ok.status == 200, ok.status
        self.cseq += 2
        for contact in ok.contacts:
            if contact.uri_text == self.contact_uri:
                self.public = contact.params["pub-gruu"] or ""
                self.temporary = contact.params["temp-gruu"] or ""

    async def settle(self) -> None:
        """A keepalive round trip: everything the gateway sent before has been read."""
        await self.ua.send_text("\r\n\r\n")
        assert await self.ua.receive_text() == "\r\n"


async def alice_device(gateway: GatewayProcess, client_factory: ClientFactory) -> Device:
    ua = await client_factory(gateway)
    ua.user, ua.password = "alice", gateway.users["alice"]
    device = Device(ua, ws_contact(str(uuid.uuid4()), 1), secrets.token_hex(8), "", "")
    await device.register(gateway.users["alice"])
    assert device.public and device.temporary
    # JsSIP's Contact in its calls and answers: its public GRUU.
    ua.contact = f"<{device.public}>"
    return device


async def bob(gateway: GatewayProcess, client_factory: ClientFactory, *,
              connect_to: GatewayProcess | None = None) -> WsSipUa:
    """bob, a user of `gateway`, on a WebSocket to `connect_to` (by default the same node)."""
    ua = await client_factory(connect_to or gateway)
    ua.user, ua.password = "bob", gateway.users["bob"]
    return ua


async def answered_call(caller: WsSipUa, target: str, callee: Device) -> tuple[str, Request]:
    """caller calls target, callee answers; returns the call's Call-ID once bob has hung up,
    and the INVITE the callee got."""
    call = asyncio.create_task(caller.call(target, browser_sdp("actpass")))
    invite, _ = await callee.ua.answer(browser_sdp("active"))
    final, dialog = await call
    assert final.status == 200 and dialog is not None
    # In-dialog requests target the GRUU the callee answered with, behind our Route.
    assert dialog.remote_target == callee.ua.contact[1:-1]
    assert (await caller.hang_up(dialog)).status == 200
    bye = await callee.ua.take_bye()
    assert bye.call_id == dialog.call_id
    return dialog.call_id, invite


async def test_public_and_temporary_gruus_reach_only_their_device(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    a = await alice_device(backend_gateway, client_factory)
    b = await alice_device(backend_gateway, client_factory)
    caller = await bob(backend_gateway, client_factory)

    to_a, invite_a = await answered_call(caller, a.public, a)
    assert invite_a.uri == a.contact_uri  # retargeted to the registered contact
    b.ua.contact = f"<{b.temporary}>"
    to_b, invite_b = await answered_call(caller, b.temporary, b)
    assert invite_b.uri == b.contact_uri

    # The AoR still forks to both devices: A answers, B is cancelled.
    call = asyncio.create_task(caller.call("alice", browser_sdp("actpass")))
    ringing_b = await b.ua.next_request("INVITE")
    invite, _ = await a.ua.answer(browser_sdp("active"))
    final, dialog = await call
    assert final.status == 200 and dialog is not None
    await b.ua.next_request("CANCEL")
    await b.ua.send(ringing_b.response(487, to_tag=secrets.token_hex(4)))
    assert (await caller.hang_up(dialog)).status == 200
    await a.ua.take_bye()
    to_aor = dialog.call_id
    assert invite.call_id == ringing_b.call_id == to_aor

    for device in (a, b):
        await device.settle()
    assert a.invites() == [to_a, to_aor]
    assert b.invites() == [to_b, to_aor]


async def test_in_dialog_request_to_a_gruu_without_our_route_reaches_its_device(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    a = await alice_device(backend_gateway, client_factory)
    b = await alice_device(backend_gateway, client_factory)
    caller = await bob(backend_gateway, client_factory)
    b.ua.contact = f"<{b.temporary}>"
    call = asyncio.create_task(caller.call(b.temporary, browser_sdp("actpass")))
    invite, _ = await b.ua.answer(browser_sdp("active"))
    final, dialog = await call
    assert final.status == 200 and dialog is not None and invite.call_id == dialog.call_id
    assert dialog.remote_target == b.temporary
    # A peer that lost the route set sends its BYE straight to the GRUU, at the gateway,
    # which retargets it to the device's registered contact.
    dialog.route_set = []
    assert (await caller.hang_up(dialog)).status == 200
    bye = await b.ua.take_bye()
    assert bye.uri == b.contact_uri and bye.call_id == dialog.call_id
    await a.settle()
    assert not [r for r in a.ua.requests if r.call_id == dialog.call_id]


async def test_unknown_stale_and_unregistered_gruus_are_refused(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    password = backend_gateway.users["alice"]
    a = await alice_device(backend_gateway, client_factory)
    b = await alice_device(backend_gateway, client_factory)
    caller = await bob(backend_gateway, client_factory)
    offer = browser_sdp("actpass")

    uri = SipUri.parse(b.temporary)
    token = (uri.user or "").removeprefix("tgruu.")
    forged = b.temporary.replace(token, token[:30] + ("A" if token[30] != "A" else "B")
                                 + token[31:])
    for unknown in (forged, f"sip:tgruu.{secrets.token_urlsafe(60)}@{DOMAIN};gr",
                    f"sip:alice@{DOMAIN};gr",
                    f"sip:nobody@{DOMAIN};gr=urn:uuid:{uuid.uuid4()}"):
        final, _ = await caller.call(unknown, offer)
        assert final.status == 404, (unknown, final.status)

    # §5.3: B registers again under a new Call-ID; its earlier temporary GRUU is void.
    stale = b.temporary
    await b.register(password, call_id=secrets.token_hex(8))
    assert (await caller.call(stale, offer))[0].status == 404

    # A leaves: its GRUUs are valid but reach nobody, and never fall back to the AoR (B).
    a_temporary = a.temporary
    await a.register(password, expires=0)
    for gone in (a.public, a_temporary):
        final, _ = await caller.call(gone, offer)
        assert final.status == 480, (gone, final.status)
    never_registered = f"sip:alice@{DOMAIN};gr=urn:uuid:{uuid.uuid4()}"
    assert (await caller.call(never_registered, offer))[0].status == 480

    # Nothing of the above rang a device: B rings now, for this call only.
    call = asyncio.create_task(caller.call(b.temporary, offer))
    invite = await b.ua.next_request("INVITE")
    await b.ua.send(invite.response(486, to_tag=secrets.token_hex(4)))
    assert (await call)[0].status == 486
    for device in (a, b):
        await device.settle()
    assert a.invites() == []
    assert b.invites() == [invite.call_id]


async def test_requests_to_a_gruu_are_authenticated(
    backend_gateway: GatewayProcess, client_factory: ClientFactory,
) -> None:
    a = await alice_device(backend_gateway, client_factory)
    stranger = await bob(backend_gateway, client_factory)
    stranger.password = "not-bobs-password"
    for gruu in (a.public, a.temporary):
        final, _ = await stranger.call(gruu, browser_sdp("actpass"))
        assert final.status == 407, final.status
    await a.settle()
    assert a.invites() == []


async def test_a_temporary_gruu_from_one_node_reaches_the_device_through_another(
    gateway_factory: GatewayFactory, redis_url: str, client_factory: ClientFactory,
) -> None:
    secret = secrets.token_hex(16)
    users = {name: secrets.token_urlsafe(9) for name in ("alice", "bob")}
    node_a = await gateway_factory(users=users, domain=DOMAIN, transports=("tcp", "ws"),
                                   redis_url=redis_url, node_id="node-a",
                                   extra_args=["--auth-secret", secret])
    node_b = await gateway_factory(domain=DOMAIN, transports=("tcp", "ws"),
                                   redis_url=redis_url, node_id="node-b",
                                   extra_args=["--auth-secret", secret])
    a = await alice_device(node_a, client_factory)
    a.ua.contact = f"<{a.temporary}>"
    caller = await bob(node_a, client_factory, connect_to=node_b)
    _, invite = await answered_call(caller, a.temporary, a)
    assert invite.uri == a.contact_uri
    assert len(invite.get_all("via")) == 3  # bob, node B, node A


async def test_a_gruu_that_reaches_nobody_never_goes_to_a_trunk(
    gateway_factory: GatewayFactory, client_factory: ClientFactory, tmp_path: Path,
) -> None:
    pbx = await RawUdpPeer.open()
    config = tmp_path / "catch-all-trunk.toml"
    config.write_text(f'[[trunks]]\nname = "pbx"\naddress = "127.0.0.1:{pbx.address[1]}"\n'
                      'match = ".*"\n')
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)},
        domain=DOMAIN, transports=("udp", "ws"), extra_args=["--config", str(config)],
    )
    try:
        a = await alice_device(gateway, client_factory)
        caller = await bob(gateway, client_factory)
        offer = browser_sdp("actpass")
        await a.register(gateway.users["alice"], expires=0)
        assert (await caller.call(a.public, offer))[0].status == 480
        garbled = a.temporary.replace("tgruu.", "tgruu.x")
        assert (await caller.call(garbled, offer))[0].status == 404
        # The trunk takes what is not a GRUU: the first INVITE it sees is this one.
        call = asyncio.create_task(caller.call(f"sip:5551234@{DOMAIN}", offer))
        first = await pbx.next_message()
        assert isinstance(first, Request) and first.method == "INVITE"
        assert SipUri.parse(first.uri).user == "5551234"
        call.cancel()
    finally:
        pbx.close()
