"""Subscriptions between real SIP stacks through the gateway (issue 17, item 4): two pjsua2
phones registered over UDP, and a PBX behind a trunk (tests.support.voicemail_pbx).

- Presence is relayed between users: alice's pjsua2 Buddy subscribes to bob (digest, like a
  call), bob's pjsua2 answers with PIDF and notifies each change of its status.
- The PBX's unsolicited MWI NOTIFY (Asterisk's default) reaches bob's pjsua2 (onMwiInfo).
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from tests.fixtures.gateway import GatewayFactory
from tests.sip.core_peer import RawUdpPeer
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.voicemail_pbx import PBX_ADDRESS, VoicemailPbx, trunk_config

DOMAIN = "example.test"
WAIT = 15.0


async def test_presence_between_phones_and_unsolicited_mwi_from_the_pbx(
    gateway_factory: GatewayFactory, tmp_path: Path,
) -> None:
    pbx_peer = await RawUdpPeer.open(PBX_ADDRESS)
    config = trunk_config(tmp_path / "trunk.toml", pbx_peer.address[1])
    gateway = await gateway_factory(
        users={"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)},
        domain=DOMAIN, transports=("udp",), extra_args=["--config", config])
    assert gateway.udp_port is not None
    pbx = VoicemailPbx(pbx_peer, ("127.0.0.1", gateway.udp_port), DOMAIN)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(pbx.close)
        phones: dict[str, PjsuaPhone] = {}
        for name in ("alice", "bob"):
            phone = await PjsuaPhone.start(f"{name}-{secrets.token_hex(3)}")
            stack.push_async_callback(phone.stop)
            registered = await phone.register("127.0.0.1", gateway.udp_port, name,
                                              gateway.users[name], DOMAIN)
            assert registered["code"] == 200, registered
            phones[name] = phone
        alice, bob = phones["alice"], phones["bob"]

        await bob.set_presence(True, "Available")
        await alice.watch_presence(f"sip:bob@{DOMAIN}")
        online = await alice.wait_for("buddy_state", WAIT, note="Available")
        assert (online["online"], online["sub_state"]) == (True, "ACTIVE"), online
        await bob.set_presence(True, "On the phone")
        changed = await alice.wait_for("buddy_state", WAIT, note="On the phone")
        assert changed["online"], changed

        mwi_call_id = pbx.unsolicited_mwi("bob", 3, 1)
        mwi = await bob.wait_for("mwi", WAIT)
        assert "Messages-Waiting: yes" in mwi["body"] and "Voice-Message: 3/1" in mwi["body"]
        assert await pbx.notify_answer(mwi_call_id) == 200
