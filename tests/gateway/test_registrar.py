"""The registrar in-process (tests/support/signalling_node.py): the digest challenge, a
binding stored with its source address, a fetch, and the refusals, over real loopback UDP."""

from __future__ import annotations

from pathlib import Path

from tests.sip.core_peer import CorePeer
from tests.support.signalling_node import DOMAIN, register, signalling_node


async def test_register_is_challenged_then_stores_the_binding(tmp_path: Path) -> None:
    async with signalling_node(tmp_path, users={"alice": "secret-a"}) as node:
        phone = CorePeer()
        await phone.start()
        try:
            ok = await register(phone, node, "alice")
            assert ok.status == 200
            bindings = await node.location.lookup(f"sip:alice@{DOMAIN}")
            host, port = phone.address("udp")
            assert [(b.contact, b.received, b.transport) for b in bindings] == [
                (f"sip:alice@{host}:{port}", f"{host}:{port}", "udp")]
            assert ok.get_all("contact") and f"{host}:{port}" in ok.get_all("contact")[0]
        finally:
            await phone.close()


async def test_wrong_password_and_foreign_domain_are_refused(tmp_path: Path) -> None:
    async with signalling_node(tmp_path, users={"alice": "secret-a"}) as node:
        phone = CorePeer()
        await phone.start()
        try:
            node.passwords["alice"] = "not-the-password"
            refused = await register(phone, node, "alice")
            assert refused.status == 401  # challenged again: the client gives up
            assert await node.location.lookup(f"sip:alice@{DOMAIN}") == []
            foreign = phone.new_request("REGISTER", node.target)
            foreign.uri = f"sip:{DOMAIN}"
            foreign.set("To", "<sip:alice@elsewhere.example>")
            responses, _ = await phone.send(foreign, node.target)
            assert responses[-1].status == 403
        finally:
            await phone.close()
