"""The forwarding engine (gateway.forking) in-process, with no policy: a caller and phones are
CorePeers on loopback UDP, the engine runs on a real transaction layer, and the hooks only
record what the engine tells them (or answer a challenge with trunk_auth)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.config import Trunk
from gateway.flowtoken import FlowTokens
from gateway.forking import Branch, ForwardingEngine, best_response
from gateway.routing import Destination, LocalAddresses
from gateway.trunk_auth import answer_trunk_challenge
from sip.message import Request, Response
from sip.resolver import Target
from sip.server_transaction import ServerTransaction
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer
from tests.sip.core_peer import CorePeer

DOMAIN = "example.com"


@dataclass
class RecordingHooks:
    """BranchHooks that note every call; on_challenge answers with `trunk`'s credentials."""

    trunk: Trunk | None = None
    branch_requests: list[Request] = field(default_factory=list)
    branch_statuses: list[int] = field(default_factory=list)
    winners: list[Destination] = field(default_factory=list)
    finals: list[int] = field(default_factory=list)
    upstream: list[int] = field(default_factory=list)
    cancelled: int = 0

    def on_branch_request(self, branch: Branch) -> None:
        self.branch_requests.append(branch.request)

    def on_branch_response(self, branch: Branch, response: Response) -> None:
        self.branch_statuses.append(response.status)

    def on_challenge(self, branch: Branch, challenge: Response) -> Request | None:
        if self.trunk is None:
            return None
        return answer_trunk_challenge(branch.request, self.trunk, challenge)

    async def before_upstream(self, branch: Branch, response: Response) -> None:
        self.upstream.append(response.status)

    def on_answered(self, winner: Branch) -> None:
        self.winners.append(winner.destination)

    def on_final(self, response: Response) -> None:
        self.finals.append(response.status)

    def on_cancelled(self) -> None:
        self.cancelled += 1


@dataclass
class Bench:
    engine: ForwardingEngine
    transactions: TransactionLayer
    caller: CorePeer
    target: Target
    # Each request reaching the engine's node is forwarded to what this returns.
    route: Callable[[Request], list[Destination]] = lambda request: []
    hooks: RecordingHooks = field(default_factory=RecordingHooks)


@contextlib.asynccontextmanager
async def bench(invite_timeout: float = 30.0) -> AsyncIterator[Bench]:
    transport = TransportLayer()
    transactions = TransactionLayer(transport)
    secret = secrets.token_bytes(32)
    addresses = LocalAddresses(DOMAIN, "", FlowTokens(secret), "node")
    host, port = await transport.listen_udp("127.0.0.1", 0)
    addresses.add_listener("udp", host, port)
    engine = ForwardingEngine(transactions, transport, addresses, secret, invite_timeout)
    transactions.on_stray_response = engine.on_stray_response
    caller = CorePeer()
    await caller.start()
    setup = Bench(engine, transactions, caller, Target("udp", host, port))

    def on_request(request: Request, server: ServerTransaction | None) -> None:
        if server is None:
            return
        if request.method == "CANCEL":
            engine.cancel(request, server)
            return
        forwarding = engine.begin(request, server, setup.hooks)
        engine.fork(forwarding, setup.route(request), record_route=True)

    transactions.on_request = on_request
    try:
        yield setup
    finally:
        engine.close()
        await caller.close()
        await transactions.close()
        await transport.close()


async def phone(*, answer: bool = True) -> CorePeer:
    peer = CorePeer(answer=answer)
    await peer.start()
    return peer


def toward(peer: CorePeer) -> Destination:
    host, port = peer.address("udp")
    return Destination(f"sip:phone@{host}:{port}", Target("udp", host, port))


async def test_fork_relays_the_answer_and_cancels_the_other_branch() -> None:
    async with bench() as setup:
        answering, ringing = await phone(), await phone(answer=False)
        try:
            setup.route = lambda request: [toward(ringing), toward(answering)]
            responses, _ = await setup.caller.send(
                setup.caller.new_request("INVITE", setup.target), setup.target)
            assert responses[-1].status == 200
            assert setup.hooks.winners == [toward(answering)]
            # The ringing phone got a CANCEL (after its 180) and ended its INVITE with 487.
            cancel = await _until(lambda: _methods(ringing).count("CANCEL") == 1)
            assert cancel
            await _until(lambda: 487 in setup.hooks.branch_statuses)
            # Both branches carried our Via above the caller's and a Record-Route.
            for request in setup.hooks.branch_requests:
                assert len(request.vias) == 2 and request.get("record-route")
                assert request.max_forwards == 69
        finally:
            await answering.close()
            await ringing.close()


async def test_no_answer_times_out_with_480_and_cancels_every_branch() -> None:
    async with bench(invite_timeout=0.3) as setup:
        first, second = await phone(answer=False), await phone(answer=False)
        try:
            setup.route = lambda request: [toward(first), toward(second)]
            responses, _ = await setup.caller.send(
                setup.caller.new_request("INVITE", setup.target), setup.target)
            assert [r.status for r in responses][-1] == 480
            assert 180 in setup.hooks.upstream  # the ringing went upstream first
            assert setup.hooks.finals == [480]
            await _until(lambda: "CANCEL" in _methods(first) and "CANCEL" in _methods(second))
        finally:
            await first.close()
            await second.close()


async def test_caller_cancel_reaches_the_branches_and_487_goes_upstream() -> None:
    async with bench() as setup:
        ringing = await phone(answer=False)
        try:
            setup.route = lambda request: [toward(ringing)]
            invite = setup.caller.new_request("INVITE", setup.target)
            final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

            def on_response(response: Response, client: object) -> None:
                if response.status >= 200 and not final.done():
                    final.set_result(response)

            client = setup.caller.transactions.create_client(invite, setup.target, on_response)
            await _until(lambda: 180 in setup.hooks.upstream)
            responses, _ = await setup.caller.send(client.cancel_request(), setup.target)
            assert responses[-1].status == 200
            assert (await asyncio.wait_for(final, 5.0)).status == 487
            assert setup.hooks.finals == [487]
        finally:
            await ringing.close()


async def test_a_challenged_branch_is_retried_once_with_credentials() -> None:
    async with bench() as setup:
        pbx = ChallengingPbx()
        await pbx.start()
        try:
            route_to_trunk(setup, pbx, password="trunk-secret")
            invite = setup.caller.new_request("INVITE", setup.target)
            responses, _ = await setup.caller.send(invite, setup.target)
            assert responses[-1].status == 200
            # Upstream the caller's own CSeq; toward the PBX one higher, with credentials.
            assert responses[-1].cseq.number == invite.cseq.number
            retry = pbx.invites[-1]
            assert retry.cseq.number == invite.cseq.number + 1
            assert 'username="gw"' in (retry.get("proxy-authorization") or "")
            assert retry.top_via.branch != pbx.invites[0].top_via.branch
        finally:
            await pbx.close()


async def test_a_second_challenge_is_final_and_the_unknown_cancel_is_481() -> None:
    async with bench() as setup:
        pbx = ChallengingPbx(always=True)
        await pbx.start()
        try:
            route_to_trunk(setup, pbx, password="wrong")
            responses, _ = await setup.caller.send(
                setup.caller.new_request("INVITE", setup.target), setup.target)
            assert responses[-1].status == 407
            assert len(pbx.invites) == 2
            stray = setup.caller.new_request("CANCEL", setup.target)
            responses, _ = await setup.caller.send(stray, setup.target)
            assert responses[-1].status == 481
        finally:
            await pbx.close()


def route_to_trunk(setup: Bench, pbx: ChallengingPbx, password: str) -> None:
    """Every request of the bench goes to `pbx` as trunk "pbx" (user gw, this password)."""
    host, port = pbx.peer.address("udp")
    trunk = Trunk("pbx", f"{host}:{port}", username="gw", password=password)
    setup.hooks.trunk = trunk
    setup.route = lambda request: [
        Destination(f"sip:0123@{host}:{port}", Target("udp", host, port), trunk=trunk)]


def test_best_response_prefers_6xx_then_lowest_class_and_challenges() -> None:
    request = Request("INVITE", "sip:bob@example.com", [
        ("via", "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
        ("from", "From", "<sip:a@b>;tag=1"), ("to", "To", "<sip:bob@example.com>"),
        ("call-id", "Call-ID", "c"),
        ("cseq", "CSeq", "1 INVITE")])

    def best(*statuses: int) -> int:
        return best_response([request.response(status) for status in statuses]).status

    assert best(486, 603, 200) == 603
    assert best(503, 486) == 486
    assert best(404, 407, 486) == 407
    assert best(408, 404) == 404
    assert best(503, 302) == 302


class ChallengingPbx:
    """A UAS that answers 407 to an INVITE without Proxy-Authorization (or to every INVITE
    with `always`), then 200."""

    def __init__(self, *, always: bool = False) -> None:
        self.peer = CorePeer()
        self.always = always
        self.invites: list[Request] = []
        self.peer.transactions.on_request = self._on_request

    async def start(self) -> None:
        await self.peer.start()

    async def close(self) -> None:
        await self.peer.close()

    def _on_request(self, request: Request, server: ServerTransaction | None) -> None:
        if server is None:
            return
        if request.method != "INVITE":
            server.respond(request.response(200))
            return
        self.invites.append(request)
        if self.always or not request.has("proxy-authorization"):
            challenge = request.response(407, to_tag="pbx")
            challenge.add("Proxy-Authenticate",
                          'Digest realm="pbx", nonce="0123abcd", algorithm=MD5, qop="auth"')
            server.respond(challenge)
            return
        server.respond(request.response(200, to_tag="pbx"))


def _methods(peer: CorePeer) -> list[str]:
    return [request.method for request in peer.requests]


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    return True
