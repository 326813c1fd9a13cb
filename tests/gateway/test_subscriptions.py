"""Subscriptions through the gateway (issue 17, item 4), at the SIP level.

- The gateway is the dialog-event notifier (RFC 4235) for its own users: alice (a UDP phone)
  watches bob's calls; carol calls bob over WebSocket and alice's NOTIFYs follow the call
  through trying, early, confirmed and terminated. Refresh, unsubscribe and a stranger's
  in-dialog SUBSCRIBE are covered.
- A relayed subscription's dialog ends with the NOTIFY whose Subscription-State is terminated.
- A user may not send NOTIFY outside a subscription (only a trunk's unsolicited MWI may).
- A PBX behind a trunk watches a web user's calls without a challenge.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway.test_hostile_input import metric, register_over_udp, wait_for_metric
from tests.gateway.test_proxy_dialog_relay import (
    UdpParty,
    browser,
    callee_request,
    open_party,
)
from tests.gateway.test_proxy_negative import DOMAIN, users
from tests.sip.core_peer import RawUdpPeer
from tests.support.voicemail_pbx import PBX_ADDRESS, trunk_config
from tests.support.ws_sip import browser_sdp

DIALOG_EVENT = "Event: dialog\r\nAccept: application/dialog-info+xml\r\n"


async def subscribe(party: UdpParty, watched: str, password: str, extra: str) -> Response:
    """An authenticated SUBSCRIBE from `party` to `watched`; the final response."""
    party.call_id, party.local_tag = secrets.token_hex(8), secrets.token_hex(4)
    ruri = party.remote_uri = f"sip:{watched}@{DOMAIN}"
    party.send(party.text("SUBSCRIBE", ruri, cseq=1, from_tag=party.local_tag, to_tag=None,
                          extra=extra))
    challenge = await party.final("SUBSCRIBE", 1)
    assert challenge.status == 407, challenge.start_line()
    credentials = build_authorization(
        select_challenge(challenge.get_all("proxy-authenticate")), method="SUBSCRIBE",
        uri=ruri, username=party.user, password=password)
    party.send(party.text("SUBSCRIBE", ruri, cseq=2, from_tag=party.local_tag, to_tag=None,
                          extra=extra + f"Proxy-Authorization: {credentials}\r\n"))
    party.cseq = 2
    return await party.final("SUBSCRIBE", 2)


class Watcher:
    """Answers each NOTIFY of its subscription with 200 and keeps them (once each: UDP
    retransmissions of an answered NOTIFY are answered again, not kept twice)."""

    def __init__(self, party: UdpParty) -> None:
        self.party = party
        self._seen: set[int] = set()
        self.bodies: list[str] = []  # of every NOTIFY kept

    async def next_notify(self) -> Request:
        while True:
            notify = await self.party.next_request("NOTIFY")
            self.party.peer.send(notify.response(200).to_bytes(), self.party.gateway)
            if notify.cseq.number not in self._seen:
                self._seen.add(notify.cseq.number)
                self.bodies.append(notify.body.decode())
                return notify

    async def states_until(self, wanted: str) -> list[str]:
        """The dialog states of successive NOTIFYs until one shows `wanted`."""
        seen: list[str] = []
        while True:
            states = re.findall(r"<state>(\w+)</state>", (await self.next_notify()).body.decode())
            seen.append(",".join(states))
            if wanted in states:
                return seen


async def test_the_gateway_notifies_a_local_users_call_states(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    alice = await open_party(gateway, "alice")
    stranger = await open_party(gateway, "mallory")
    bob = await browser(gateway, "bob")
    carol = await browser(gateway, "carol")
    watcher = Watcher(alice)
    try:
        accepted = await subscribe(alice, "bob", gateway.users["alice"],
                                   DIALOG_EVENT + "Expires: 600\r\n")
        assert accepted.status == 200 and accepted.get("expires") == "600"
        alice.remote_tag = accepted.to.tag or ""
        notifier = accepted.contacts[0].uri_text
        first = await watcher.next_notify()
        assert (first.get("subscription-state") or "").startswith("active;expires=")
        assert first.get("content-type") == "application/dialog-info+xml"
        assert 'entity="sip:bob@example.test"' in first.body.decode()
        assert "<dialog " not in first.body.decode()  # bob is idle

        # carol calls bob: alice sees bob's side of it, as the recipient.
        answered = asyncio.create_task(bob.answer(browser_sdp("active")))
        call = asyncio.create_task(carol.call("bob", browser_sdp("actpass")))
        states = await watcher.states_until("confirmed")
        assert states[0] == "trying" and "early" in states, states
        assert 'direction="recipient"' in watcher.bodies[-1], watcher.bodies[-1]
        assert "<identity>sip:carol@example.test</identity>" in watcher.bodies[-1]
        _, dialog = await call
        await answered
        assert dialog is not None
        await carol.hang_up(dialog)
        assert (await watcher.states_until("terminated"))[-1] == "terminated"

        # Only alice may refresh her subscription: from another address it is forbidden.
        in_dialog = {"from_tag": alice.local_tag, "to_tag": alice.remote_tag,
                     "from_uri": f"sip:alice@{DOMAIN}", "to_uri": f"sip:bob@{DOMAIN}"}
        stranger.call_id, stranger.remote_uri = alice.call_id, f"sip:bob@{DOMAIN}"
        stranger.send(stranger.text("SUBSCRIBE", notifier, cseq=9,
                                    extra=DIALOG_EVENT + "Expires: 0\r\n", **in_dialog))
        forged = await stranger.final("SUBSCRIBE", 9)
        assert forged.status == 403, forged.start_line()

        # A refresh is granted and answered with a full state; Expires: 0 ends it.
        alice.send(alice.text("SUBSCRIBE", notifier, cseq=3,
                              extra=DIALOG_EVENT + "Expires: 300\r\n", **in_dialog))
        refreshed = await alice.final("SUBSCRIBE", 3)
        assert (refreshed.status, refreshed.get("expires")) == (200, "300")
        refresh_notify = await watcher.next_notify()
        assert (refresh_notify.get("subscription-state") or "").startswith("active")
        alice.send(alice.text("SUBSCRIBE", notifier, cseq=4,
                              extra=DIALOG_EVENT + "Expires: 0\r\n", **in_dialog))
        assert (await alice.final("SUBSCRIBE", 4)).status == 200
        last = await watcher.next_notify()
        assert last.get("subscription-state") == "terminated;reason=timeout"
        alice.send(alice.text("SUBSCRIBE", notifier, cseq=5,
                              extra=DIALOG_EVENT + "Expires: 300\r\n", **in_dialog))
        assert (await alice.final("SUBSCRIBE", 5)).status == 481  # it is gone
    finally:
        for peer in (alice.peer, stranger.peer):
            peer.close()
        await bob.close()
        await carol.close()


async def test_subscription_dialog_ends_with_the_terminated_notify(
    gateway_factory: GatewayFactory,
) -> None:
    """alice subscribes to bob's presence (relayed to bob's browser); bob's NOTIFY with
    Subscription-State: terminated ends the gateway's dialog at once, not after Expires."""
    gateway: GatewayProcess = await gateway_factory(users=users(), domain=DOMAIN,
                                                    transports=("udp", "ws"))
    bob = await browser(gateway, "bob")
    alice = await open_party(gateway, "alice")
    try:
        accepted = await subscribe(alice, "bob", gateway.users["alice"],
                                   "Event: presence\r\nExpires: 600\r\n")
        assert accepted.status == 200
        subscribe_at_bob = await bob.next_request("SUBSCRIBE")
        assert subscribe_at_bob.get("event") == "presence"
        assert await metric(gateway, "ws2sip_dialogs") == 1
        for cseq, state in enumerate(("active;expires=600", "terminated;reason=noresource"),
                                     start=1):
            notify = callee_request("NOTIFY", subscribe_at_bob, bob, "bobtag")
            notify.set("CSeq", f"{cseq} NOTIFY")
            notify.add("Event", "presence")
            notify.add("Subscription-State", state)
            await bob.send(notify)
            at_alice = await alice.next_request("NOTIFY")
            assert at_alice.get("subscription-state") == state
            alice.peer.send(at_alice.response(200).to_bytes(), alice.gateway)
            assert (await bob.response()).status == 200
        assert await wait_for_metric(gateway, "ws2sip_dialogs", 0) == 0
    finally:
        alice.peer.close()
        await bob.close()


async def test_a_user_may_not_send_notify_outside_a_subscription(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    bob = await browser(gateway, "bob")
    alice = await open_party(gateway, "alice")
    try:
        alice.call_id = secrets.token_hex(8)
        alice.remote_uri = f"sip:bob@{DOMAIN}"
        alice.send(alice.text(
            "NOTIFY", f"sip:bob@{DOMAIN}", cseq=1, from_tag="x", to_tag=None,
            extra="Event: message-summary\r\nSubscription-State: active\r\n"))
        refused = await alice.final("NOTIFY", 1)
        assert (refused.status, refused.reason) == \
            (403, "Forbidden (NOTIFY outside a subscription: trunks only)")
        await asyncio.sleep(0.3)
        assert not [r for r in bob.requests if r.method == "NOTIFY"]
    finally:
        alice.peer.close()
        await bob.close()


async def test_subscription_dialog_lasts_as_long_as_its_2xx_grants(
    gateway_factory: GatewayFactory,
) -> None:
    """Asked for 600 s, granted 1 s by the notifier's 2xx: the gateway keeps the dialog for
    the granted second and the grace for the final NOTIFY, not for ten minutes."""
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    bob = await register_over_udp(gateway, "bob")
    alice = await open_party(gateway, "alice")
    try:
        answered = asyncio.create_task(subscribe(alice, "bob", gateway.users["alice"],
                                                 "Event: presence\r\nExpires: 600\r\n"))
        at_bob = await bob.peer.next_message()
        assert isinstance(at_bob, Request) and at_bob.method == "SUBSCRIBE"
        granted = at_bob.response(200, to_tag="bobtag")
        granted.add("Expires", "1")
        granted.add("Contact", f"<sip:bob@{bob.peer.address[0]}:{bob.peer.address[1]}>")
        bob.peer.send(granted.to_bytes(), bob.gateway)
        assert (await answered).status == 200
        assert await metric(gateway, "ws2sip_dialogs") == 1
        assert await wait_for_metric(gateway, "ws2sip_dialogs", 0, timeout=25.0) == 0
    finally:
        alice.peer.close()
        bob.close()


async def test_the_gateways_dialog_subscription_expires_unless_refreshed(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"))
    alice = await open_party(gateway, "alice")
    watcher = Watcher(alice)
    try:
        accepted = await subscribe(alice, "bob", gateway.users["alice"],
                                   DIALOG_EVENT + "Expires: 2\r\n")
        assert (accepted.status, accepted.get("expires")) == (200, "2")
        first = await watcher.next_notify()
        assert first.get("subscription-state") == "active;expires=2"
        last = await watcher.next_notify()  # two seconds later, unasked
        assert last.get("subscription-state") == "terminated;reason=timeout"
        alice.send(alice.text("SUBSCRIBE", accepted.contacts[0].uri_text, cseq=3,
                              from_tag=alice.local_tag, to_tag=accepted.to.tag,
                              extra=DIALOG_EVENT + "Expires: 60\r\n"))
        assert (await alice.final("SUBSCRIBE", 3)).status == 481
    finally:
        alice.peer.close()


async def test_a_pbx_behind_the_trunk_watches_a_web_users_calls(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    """A PBX's desk phones want web users' lamps too: its SUBSCRIBE comes over the trusted
    trunk (no challenge) and the gateway notifies it like any watcher."""
    pbx = await RawUdpPeer.open(PBX_ADDRESS)
    config = trunk_config(tmp_path / "trunk.toml", pbx.address[1])
    gateway = await gateway_factory(users=users(), domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--config", config])
    assert gateway.udp_port is not None
    party = UdpParty(pbx, ("127.0.0.1", gateway.udp_port), "201")
    watcher = Watcher(party)
    try:
        party.call_id, party.local_tag = secrets.token_hex(8), secrets.token_hex(4)
        party.remote_uri = f"sip:bob@{DOMAIN}"
        party.send(party.text("SUBSCRIBE", f"sip:bob@{DOMAIN}", cseq=1,
                              from_tag=party.local_tag, to_tag=None,
                              extra=DIALOG_EVENT + "Expires: 600\r\n"))
        accepted = await party.final("SUBSCRIBE", 1)
        assert accepted.status == 200, accepted.start_line()  # trusted: no 407
        first = await watcher.next_notify()
        assert first.get("event") == "dialog" and "<dialog " not in first.body.decode()
    finally:
        pbx.close()
