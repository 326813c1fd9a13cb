"""The proxy in-process (tests/support/signalling_node.py): an authenticated call from one
CorePeer to another registered one, its ACK and BYE relayed between the dialog's two parties
only, and the dialog gone after the BYE; over real loopback UDP, no gateway subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sip.message import Request
from tests.sip.core_peer import CorePeer
from tests.support.signalling_node import DOMAIN, register, signalling_node, with_credentials


def from_user(request: Request, user: str, tag: str) -> Request:
    request.set("From", f"<sip:{user}@{DOMAIN}>;tag={tag}")
    return request


async def test_call_ack_and_bye_between_the_dialogs_parties_only(tmp_path: Path) -> None:
    users = {"alice": "alice-pw", "bob": "bob-pw"}
    async with signalling_node(tmp_path, users=users) as node:
        alice, bob, stranger = CorePeer(), CorePeer(), CorePeer()
        for peer in (alice, bob, stranger):
            await peer.start()
        try:
            assert (await register(bob, node, "bob")).status == 200
            invite = from_user(alice.new_request("INVITE", node.target), "alice", "alice-tag")
            invite.uri = f"sip:bob@{DOMAIN}"
            invite.set("To", f"<sip:bob@{DOMAIN}>")
            invite.add("P-Asserted-Identity", "<sip:ceo@bank.example>")  # a user's: stripped
            responses, _ = await alice.send(invite, node.target)
            assert responses[-1].status == 407
            retry = with_credentials(invite, responses[-1], "alice", "alice-pw")
            retry.set("Via", alice.transport.via_value("udp", alice.transactions.new_branch()))
            responses, _ = await alice.send(retry, node.target)
            assert [r.status for r in responses][-1] == 200
            ok = responses[-1]
            to_tag = ok.to.tag
            assert to_tag is not None

            forwarded = next(r for r in bob.requests if r.method == "INVITE")
            assert forwarded.get("record-route")
            assert forwarded.get("proxy-authorization") is None
            assert forwarded.get("p-asserted-identity") is None
            dialog = node.signalling.dialogs.get(invite.call_id)
            assert dialog is not None and dialog.confirmed
            assert (dialog.caller, dialog.callee) == (f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}")

            ack = from_user(alice.new_request("ACK", node.target, call_id=invite.call_id,
                                              cseq=retry.cseq.number, to_tag=to_tag),
                            "alice", "alice-tag")
            await alice.transport.send_request(ack, node.target)
            assert (await asyncio.wait_for(bob.acks.get(), 5.0)).call_id == invite.call_id

            # The same tags from another address: not a party of this dialog.
            forged = from_user(stranger.new_request("BYE", node.target, call_id=invite.call_id,
                                                    to_tag=to_tag), "alice", "alice-tag")
            responses, _ = await stranger.send(forged, node.target)
            assert responses[-1].status == 403
            assert bob.byes.empty()

            bye = from_user(alice.new_request("BYE", node.target, call_id=invite.call_id,
                                              to_tag=to_tag), "alice", "alice-tag")
            responses, _ = await alice.send(bye, node.target)
            assert responses[-1].status == 200
            assert (await asyncio.wait_for(bob.byes.get(), 5.0)).call_id == invite.call_id
            assert node.signalling.dialogs.get(invite.call_id) is None
        finally:
            for peer in (alice, bob, stranger):
                await peer.close()
