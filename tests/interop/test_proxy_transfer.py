"""Issue 17, the gateway's part of transfer, in signalling only (WebSocket clients that speak
as JsSIP does; tests/browser/test_transfer.py has the media):

- a REFER is authorised as an INVITE from its sender would be: a stranger's REFER in someone
  else's dialog gets 403, one for no dialog 481, one without credentials 407, one whose
  Refer-To the user could not call 403; Referred-By is the authenticated user;
- an INVITE with Replaces (RFC 3891) reaches the very device of the replaced call (not the
  user's other devices), even through another node, and is not refused for the callee's call
  limit, while a plain second call still gets 486.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.interop.test_proxy_sipp import DOMAIN
from tests.interop.test_proxy_websocket import register_like_jssip
from tests.support.ws_sip import Dialog, WsSipUa, browser_sdp

USERS = ("alice", "bob", "carol", "dave")


async def connect(gateway: GatewayProcess, user: str) -> WsSipUa:
    client = await WsSipUa.connect(gateway.ws_url, user, gateway.users[user], domain=DOMAIN)
    await register_like_jssip(client)
    return client


def in_dialog(client: WsSipUa, dialog: Dialog, method: str,
              headers: list[tuple[str, str]]) -> Request:
    """An in-dialog request written out here (JsSIP's shape), so a test may alter it."""
    dialog.cseq += 1
    request = Request(method, dialog.remote_target)
    request.add("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(8)}")
    for route in dialog.route_set:
        request.add("Route", route)
    request.add("Max-Forwards", "70")
    request.add("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}")
    request.add("To", f"<{dialog.remote_uri}>;tag={dialog.remote_tag}")
    request.add("Call-ID", dialog.call_id)
    request.add("CSeq", f"{dialog.cseq} {method}")
    request.add("Contact", client.contact)
    for name, value in headers:
        request.add(name, value)
    return request


async def send_and_answer(client: WsSipUa, request: Request) -> Response:
    await client.send(request)
    return await client.response()


async def call(caller: WsSipUa, callees: list[WsSipUa], answering: WsSipUa,
               target: str) -> tuple[Dialog, Dialog]:
    calling = asyncio.create_task(caller.call(target, browser_sdp("actpass")))
    invites = [await callee.next_request("INVITE") for callee in callees]
    invite = invites[callees.index(answering)]
    _, callee_dialog = await answering.answer(browser_sdp("active"), invite)
    final, caller_dialog = await calling
    assert final.status == 200 and caller_dialog is not None, final
    return caller_dialog, callee_dialog


async def test_refer_is_authorised_like_an_invite_from_its_sender(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(users={u: secrets.token_urlsafe(9) for u in USERS},
                                    domain=DOMAIN, transports=("udp", "ws"))
    alice, bob, carol = [await connect(gateway, user) for user in ("alice", "bob", "carol")]
    try:
        alice_dialog, _ = await call(alice, [bob], bob, "bob")
        refer_to = ("Refer-To", f"<sip:carol@{DOMAIN}>")

        # carol copies alice's dialog (Call-ID, tags, route) but sends from her own flow.
        forged = in_dialog(carol, Dialog(**vars(alice_dialog)), "REFER", [refer_to])
        assert (await send_and_answer(carol, forged)).status == 403
        unknown = in_dialog(carol, Dialog(**{**vars(alice_dialog), "call_id": "nope"}),
                            "REFER", [refer_to])
        assert (await send_and_answer(carol, unknown)).status == 481
        out_of_dialog = carol.request_text(
            "REFER", f"sip:bob@{DOMAIN}", from_user="carol", to_user="bob",
            call_id=secrets.token_hex(8), cseq=1,
            headers=[refer_to, ("Contact", carol.contact)])
        await carol.send_text(out_of_dialog)
        assert (await carol.response()).status == 407

        # alice is a party, but bob may not be sent where alice could not call.
        abroad = in_dialog(alice, alice_dialog, "REFER",
                           [("Refer-To", "<sip:someone@elsewhere.example>")])
        refused = await send_and_answer(alice, abroad)
        assert (refused.status, refused.reason) == (
            403, f"Forbidden (Refer-To elsewhere.example is not reachable for "
                 f"sip:alice@{DOMAIN})")
        # Nor to a number of our domain no trunk takes (a PBX referee would dial it).
        nobody = in_dialog(alice, alice_dialog, "REFER",
                           [("Refer-To", f"<sip:0900123@{DOMAIN}>")])
        assert (await send_and_answer(alice, nobody)).status == 403
        assert all(r.method != "REFER" for r in bob.requests)

        allowed = in_dialog(alice, alice_dialog, "REFER",
                            [refer_to, ("Referred-By", "<sip:mallory@elsewhere.example>")])
        await alice.send(allowed)
        relayed = await bob.next_request("REFER")
        assert relayed.get_all("referred-by") == [f"<sip:alice@{DOMAIN}>"]
        assert (await alice.response()).status == 200  # the test UA answers 200
    finally:
        for client in (alice, bob, carol):
            await client.close()


def replaces_invite(caller: WsSipUa, target: str, replaced: Dialog) -> Request:
    """The INVITE a transferee sends after a REFER with Replaces: the replaced dialog named
    from the recipient's side (to-tag its own, from-tag its peer's)."""
    invite = Request("INVITE", target)
    invite.add("Via", f"SIP/2.0/WS {caller.host};branch=z9hG4bK{secrets.token_hex(8)}")
    invite.add("Max-Forwards", "70")
    invite.add("From", f"<{caller.aor}>;tag={secrets.token_hex(4)}")
    invite.add("To", f"<{target}>")
    invite.add("Call-ID", secrets.token_hex(8))
    invite.add("CSeq", "1 INVITE")
    invite.add("Contact", caller.contact)
    invite.add("Replaces", f"{replaced.call_id};to-tag={replaced.local_tag};"
                           f"from-tag={replaced.remote_tag}")
    invite.set_body(browser_sdp("actpass").encode(), "application/sdp")
    return invite


async def send_invite_with_credentials(client: WsSipUa, invite: Request) -> None:
    """Send an INVITE, answer the gateway's 407 with digest and send it again (the caller of
    a transfer is authenticated as for any call)."""
    await client.send(invite)
    challenge = await client.response()
    assert challenge.status == 407, challenge
    invite.set("CSeq", "2 INVITE")
    invite.remove_first_value("via")
    invite.prepend("Via", f"SIP/2.0/WS {client.host};branch=z9hG4bK{secrets.token_hex(8)}")
    invite.add("Proxy-Authorization", build_authorization(
        select_challenge(challenge.get_all("proxy-authenticate")), method="INVITE",
        uri=invite.uri, username=client.user, password=client.password))
    await client.send(invite)


async def test_replaces_reaches_the_replaced_device_only_despite_a_call_limit_of_one(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    config = tmp_path / "limits.toml"
    config.write_text("max_calls_per_user = 1\n")
    gateway = await gateway_factory(users={u: secrets.token_urlsafe(9) for u in USERS},
                                    domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--config", str(config)])
    alice, bob, dave = [await connect(gateway, user) for user in ("alice", "bob", "dave")]
    desk, mobile = await connect(gateway, "carol"), await connect(gateway, "carol")
    try:
        # carol has two devices; the call alice makes is taken on the mobile.
        _, carol_dialog = await call(alice, [desk, mobile], mobile, "carol")
        busy, _ = await dave.call("carol", browser_sdp("actpass"))
        assert (busy.status, busy.reason) == (486, "Busy Here (call limit reached)")

        # A Refer-To naming the mobile's own Contact (a .invalid host nobody can resolve):
        # the gateway routes by the replaced dialog.
        contact = mobile.contact.strip("<>")
        invite = replaces_invite(bob, contact, carol_dialog)
        await send_invite_with_credentials(bob, invite)
        received = await mobile.next_request("INVITE")
        assert received.call_id == invite.call_id
        assert received.get("replaces") == invite.get("replaces")
        assert all(r.call_id != invite.call_id for r in desk.requests)
    finally:
        for client in (alice, bob, dave, desk, mobile):
            await client.close()


async def test_replaces_reaches_a_device_on_another_node(
    gateway_factory: GatewayFactory, redis_url: str,
) -> None:
    secret = secrets.token_hex(16)
    users = {u: secrets.token_urlsafe(9) for u in USERS}
    node_a = await gateway_factory(users=users, domain=DOMAIN, transports=("udp", "tcp", "ws"),
                                   redis_url=redis_url, node_id="node-a",
                                   extra_args=["--auth-secret", secret])
    node_b = await gateway_factory(domain=DOMAIN, transports=("udp", "tcp", "ws"),
                                   redis_url=redis_url, node_id="node-b",
                                   extra_args=["--auth-secret", secret])
    node_a.users = node_b.users = users
    alice, bob = await connect(node_a, "alice"), await connect(node_a, "bob")
    carol = await connect(node_b, "carol")
    try:
        _, carol_dialog = await call(alice, [carol], carol, "carol")
        invite = replaces_invite(bob, carol.contact.strip("<>"), carol_dialog)
        await send_invite_with_credentials(bob, invite)
        received = await carol.next_request("INVITE")
        assert received.call_id == invite.call_id
        assert received.get("replaces") == invite.get("replaces")
    finally:
        for client in (alice, bob, carol):
            await client.close()
