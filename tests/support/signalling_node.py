"""A gateway's signalling core in the test's own event loop: a real transport listening on
loopback UDP, the transaction layer, an in-memory location service, a user file, and the
registrar and proxy wired by gateway.wiring as the gateway wires them (no media anchor, no
WebSocket edge). Tests talk to it with tests.sip.core_peer.CorePeer over real sockets.

    async with signalling_node(tmp_path, users={"alice": "pw"}) as node:
        node.target  # where to send requests
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.auth import Authenticator
from gateway.config import Trunk
from gateway.dispatch import RequestCounts, RequestDispatch
from gateway.location import MemoryLocationService
from gateway.proxy import ProxyPolicy
from gateway.registrar import RegistrarPolicy
from gateway.users import FileUserStore
from gateway.wiring import Signalling, wire_signalling
from sip.digest import build_authorization, select_challenge
from sip.message import Request, Response
from sip.resolver import Target
from sip.tasks import TaskSet
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer
from tests.sip.core_peer import CorePeer

DOMAIN = "example.com"
NODE_ID = "node-under-test"


@dataclass
class SignallingNode:
    transport: TransportLayer
    transactions: TransactionLayer
    location: MemoryLocationService
    users: FileUserStore
    auth: Authenticator
    signalling: Signalling
    passwords: dict[str, str]

    @property
    def target(self) -> Target:
        bound = self.transport.listening("udp")
        assert bound is not None
        return Target("udp", *bound)


@contextlib.asynccontextmanager
async def signalling_node(
    directory: Path, *, users: Mapping[str, str] = {}, trunks: tuple[Trunk, ...] = (),  # noqa: B006
    invite_timeout: float = 180.0, max_calls_per_user: int = 0,
) -> AsyncIterator[SignallingNode]:
    transport = TransportLayer()
    transactions = TransactionLayer(transport, trying_after_tu=True)
    location = MemoryLocationService()
    store = FileUserStore(directory / "users.json")
    for name, password in users.items():
        await store.add(name, DOMAIN, password)
    secret = secrets.token_bytes(32)
    auth = Authenticator(store, DOMAIN, secret, nonce_lifetime=300.0)
    signalling = wire_signalling(
        proxy_policy=ProxyPolicy(domain=DOMAIN, node_id=NODE_ID, public_address="",
                                 invite_timeout=invite_timeout,
                                 max_calls_per_user=max_calls_per_user, trunks=trunks),
        registrar_policy=RegistrarPolicy(domain=DOMAIN, node_id=NODE_ID, min_expires=60,
                                         max_expires=3600, default_expires=600,
                                         flow_timer=120),
        transactions=transactions, transport=transport, location=location, auth=auth,
        secret=secret,
    )
    tasks = TaskSet(logging.getLogger("tests.signalling_node"), "request handling")
    dispatch = RequestDispatch(
        domain=DOMAIN, registrar=signalling.registrar, proxy=signalling.proxy,
        addresses=signalling.addresses, tasks=tasks, answer_register_eagerly=True,
        counts=RequestCounts(),
    )
    transactions.on_request = dispatch
    transactions.on_stray_ack = dispatch.stray_ack
    host, port = await transport.listen_udp("127.0.0.1", 0)
    signalling.addresses.add_listener("udp", host, port)
    try:
        yield SignallingNode(transport, transactions, location, store, auth, signalling,
                             dict(users))
    finally:
        await signalling.close()
        tasks.cancel_all()
        await transactions.close()
        await transport.close()
        await location.close()


def with_credentials(request: Request, challenge: Response, username: str,
                     password: str) -> Request:
    """`request` again, answering `challenge` (401 or 407), with a higher CSeq."""
    proxy = challenge.status == 407
    retry = request.copy()
    retry.set("CSeq", f"{request.cseq.number + 1} {request.method}")
    chosen = select_challenge(challenge.get_all(
        "Proxy-Authenticate" if proxy else "WWW-Authenticate"))
    retry.add("Proxy-Authorization" if proxy else "Authorization", build_authorization(
        chosen, method=request.method, uri=request.uri, username=username, password=password))
    return retry


async def register(peer: CorePeer, node: SignallingNode, user: str) -> Response:
    """REGISTER the peer's UDP contact as `user`, answering the challenge."""
    request = peer.new_request("REGISTER", node.target)
    request.uri = f"sip:{DOMAIN}"
    request.set("From", f"<sip:{user}@{DOMAIN}>;tag={secrets.token_hex(4)}")
    request.set("To", f"<sip:{user}@{DOMAIN}>")
    host, port = peer.address("udp")
    request.set("Contact", f"<sip:{user}@{host}:{port}>")
    responses, _ = await peer.send(request, node.target)
    challenge = responses[-1]
    assert challenge.status == 401, challenge.status
    retry = with_credentials(request, challenge, user, node.passwords[user])
    retry.set("Via", peer.transport.via_value("udp", peer.transactions.new_branch()))
    responses, _ = await peer.send(retry, node.target)
    return responses[-1]
