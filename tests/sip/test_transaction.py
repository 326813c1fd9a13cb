"""Transaction layer (RFC 3261 §17, RFC 6026) over real loopback sockets, with fast timers."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from sip.client_transaction import ClientTransaction
from sip.message import Request, Response, parse_message
from sip.resolver import Target
from sip.server_transaction import ServerTransaction
from sip.timers import Timers
from tests.sip.core_peer import CorePeer, RawUdpPeer, raw_request

T1 = 0.1
FAST = Timers(t1=T1, t2=0.4, t4=0.3, timer_d=0.3, timer_j=0.5, timer_l=1.0, timer_m=1.0)
# Timers never fire early, so lower bounds on intervals hold however loaded the machine is.
EARLY_SLACK = 0.9


class ServerTu:
    """Records what the transaction layer passes up; answers as each test tells it to."""

    def __init__(self, core: CorePeer) -> None:
        self.requests: asyncio.Queue[tuple[Request, ServerTransaction | None]] = asyncio.Queue()
        core.transactions.on_request = lambda request, tx: self.requests.put_nowait((request, tx))

    async def next(self) -> tuple[Request, ServerTransaction | None]:
        return await asyncio.wait_for(self.requests.get(), 5)


@pytest.fixture
async def core() -> AsyncIterator[CorePeer]:
    peer = CorePeer(FAST)
    await peer.start()
    yield peer
    await peer.close()


@pytest.fixture
async def peer() -> AsyncIterator[RawUdpPeer]:
    raw = await RawUdpPeer.open()
    yield raw
    raw.close()


def peer_target(peer: RawUdpPeer) -> Target:
    return Target("udp", *peer.address)


async def until_no_transactions(*cores: CorePeer) -> None:
    for _ in range(200):
        if all(core.transactions.transaction_count == 0 for core in cores):
            return
        await asyncio.sleep(0.05)
    counts = [core.transactions.transaction_count for core in cores]
    raise AssertionError(f"transactions left in the tables: {counts}")


def collect(responses: list[Response]) -> Callable[[Response, ClientTransaction], None]:
    def on_response(response: Response, _: ClientTransaction) -> None:
        responses.append(response)

    return on_response


def answer(request: Request, status: int, to_tag: str | None = "uas") -> bytes:
    return request.response(status, to_tag=to_tag).to_bytes()


# --- client transactions -----------------------------------------------------------------------
async def test_non_invite_client_retransmits_until_answered(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    responses: list[Response] = []
    request = core.new_request("OPTIONS", peer_target(peer))
    core.transactions.create_client(request, peer_target(peer), collect(responses))
    arrivals = [await peer.next() for _ in range(3)]
    branches = {parse_message(data).top_via.branch for _, data in arrivals}
    assert branches == {request.top_via.branch}
    times = [at for at, _ in arrivals]
    assert times[1] - times[0] >= T1 * EARLY_SLACK  # timer E: T1, then 2·T1
    assert times[2] - times[1] >= 2 * T1 * EARLY_SLACK
    last = parse_message(arrivals[-1][1])
    assert isinstance(last, Request)
    peer.send(answer(last, 200), core.address("udp"))
    await until_no_transactions(core)
    assert [response.status for response in responses] == [200]
    assert await peer.nothing_within(0.3)


async def test_invite_client_timer_a_then_timer_b_408(peer: RawUdpPeer) -> None:
    # Sends at 0, T1, 3·T1, 7·T1, 15·T1; the next would be at 31·T1, after timer B (23·T1).
    core = CorePeer(Timers(t1=T1, timer_b=23 * T1))
    await core.start()
    try:
        responses: list[Response] = []
        core.transactions.create_client(core.new_request("INVITE", peer_target(peer)),
                                        peer_target(peer), collect(responses))
        arrivals = [await peer.next() for _ in range(5)]
        intervals = [later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals)]
        for index, interval in enumerate(intervals):
            assert interval >= T1 * 2**index * EARLY_SLACK, intervals
        await until_no_transactions(core)
        assert [response.status for response in responses] == [408]
        assert peer.arrivals.empty()
    finally:
        await core.close()


async def test_invite_client_acks_non_2xx_with_the_same_branch(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    responses: list[Response] = []
    invite = core.new_request("INVITE", peer_target(peer))
    core.transactions.create_client(invite, peer_target(peer), collect(responses))
    received = await peer.next_message()
    assert isinstance(received, Request)
    peer.send(answer(received, 100, None), core.address("udp"))
    busy = answer(received, 486, "busy")
    peer.send(busy, core.address("udp"))
    ack = await peer.next_message()
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via.branch == invite.top_via.branch
    assert (ack.cseq.number, ack.cseq.method) == (invite.cseq.number, "ACK")
    assert ack.to.tag == "busy" and ack.uri == invite.uri and ack.call_id == invite.call_id
    peer.send(busy, core.address("udp"))  # a retransmitted 486 is ACKed again, not passed up
    assert (await peer.next_message()).method == "ACK"  # type: ignore[union-attr]
    await until_no_transactions(core)
    assert [response.status for response in responses] == [100, 486]


async def test_stray_2xx_after_the_transaction_reaches_the_tu(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    strays: asyncio.Queue[Response] = asyncio.Queue()
    core.transactions.on_stray_response = lambda response, _: strays.put_nowait(response)
    responses: list[Response] = []
    core.transactions.create_client(core.new_request("INVITE", peer_target(peer)),
                                    peer_target(peer), collect(responses))
    invite = await peer.next_message()
    assert isinstance(invite, Request)
    ok = answer(invite, 200)
    peer.send(ok, core.address("udp"))
    peer.send(ok, core.address("udp"))  # in "Accepted" (RFC 6026) retransmissions go to the TU
    await until_no_transactions(core)  # timer M
    assert [response.status for response in responses] == [200, 200]
    peer.send(ok, core.address("udp"))
    stray = await asyncio.wait_for(strays.get(), 5)
    assert stray.status == 200 and stray.call_id == invite.call_id


async def test_transport_error_gives_503(core: CorePeer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    target = Target("tcp", "127.0.0.1", closed_port)
    responses, _ = await core.send(core.new_request("OPTIONS", target), target)
    assert [response.status for response in responses] == [503]
    assert core.transactions.transaction_count == 0


async def test_cancel_request_copies_what_9_1_requires(core: CorePeer, peer: RawUdpPeer) -> None:
    invite = core.new_request("INVITE", peer_target(peer))
    invite.add("Route", "<sip:proxy.example.com;lr>")
    transaction = core.transactions.create_client(invite, peer_target(peer), collect([]))
    cancel = transaction.cancel_request()
    assert (cancel.method, cancel.uri, cancel.call_id) == ("CANCEL", invite.uri, invite.call_id)
    assert (cancel.cseq.number, cancel.cseq.method) == (invite.cseq.number, "CANCEL")
    assert cancel.get("From") == invite.get("From") and cancel.get("To") == invite.get("To")
    assert str(cancel.top_via) == str(invite.top_via)
    assert cancel.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    transaction.terminate()
    assert core.transactions.transaction_count == 0


# --- server transactions -----------------------------------------------------------------------
async def test_invite_server_retransmits_non_2xx_until_ack(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    tu = ServerTu(core)
    peer.send(raw_request("INVITE", f"127.0.0.1:{peer.address[1]}"), core.address("udp"))
    trying = await peer.next_message()
    assert isinstance(trying, Response) and trying.status == 100
    request, transaction = await tu.next()
    assert transaction is not None and transaction.state == "proceeding"
    transaction.respond(request.response(486, to_tag="busy"))
    arrivals = [await peer.next() for _ in range(3)]
    assert {parse_message(data).status for _, data in arrivals} == {486}  # type: ignore[union-attr]
    assert arrivals[1][0] - arrivals[0][0] >= T1 * EARLY_SLACK  # timer G
    assert arrivals[2][0] - arrivals[1][0] >= 2 * T1 * EARLY_SLACK
    peer.send(raw_request("ACK", f"127.0.0.1:{peer.address[1]}", to_tag="busy"),
              core.address("udp"))
    await until_no_transactions(core)  # confirmed, then timer I
    assert transaction.acked and transaction.state == "terminated"
    assert tu.requests.empty()  # the ACK for a non-2xx belongs to the transaction
    while not peer.arrivals.empty():  # 486s already in flight when the ACK went out
        peer.arrivals.get_nowait()
    assert await peer.nothing_within(0.5)


async def test_retransmitted_requests_are_absorbed(core: CorePeer, peer: RawUdpPeer) -> None:
    tu = ServerTu(core)
    options = raw_request("OPTIONS", f"127.0.0.1:{peer.address[1]}", call_id="absorb")
    peer.send(options, core.address("udp"))
    request, transaction = await tu.next()
    assert transaction is not None
    transaction.respond(request.response(200, to_tag="t"))
    first = await peer.next_message()
    peer.send(options, core.address("udp"))
    again = await peer.next_message()
    assert isinstance(again, Response) and again.status == 200
    assert again.to_bytes() == first.to_bytes()
    invite = raw_request("INVITE", f"127.0.0.1:{peer.address[1]}", branch="z9hG4bKinv")
    peer.send(invite, core.address("udp"))
    assert (await peer.next_message()).status == 100  # type: ignore[union-attr]
    request, transaction = await tu.next()
    assert transaction is not None
    transaction.respond(request.response(180, to_tag="t"))
    assert (await peer.next_message()).status == 180  # type: ignore[union-attr]
    peer.send(invite, core.address("udp"))
    assert (await peer.next_message()).status == 180  # type: ignore[union-attr]
    transaction.respond(request.response(200, to_tag="t"))
    assert (await peer.next_message()).status == 200  # type: ignore[union-attr]
    peer.send(invite, core.address("udp"))  # RFC 6026 "Accepted": absorbed silently
    assert await peer.nothing_within(0.3)
    peer.send(raw_request("ACK", f"127.0.0.1:{peer.address[1]}", branch="z9hG4bKack",
                          to_tag="t"), core.address("udp"))
    ack, none = await tu.next()
    assert ack.method == "ACK" and none is None
    await until_no_transactions(core)
    assert tu.requests.empty()


async def test_uas_2xx_is_retransmitted_until_the_ack(core: CorePeer, peer: RawUdpPeer) -> None:
    tu = ServerTu(core)
    peer.send(raw_request("INVITE", f"127.0.0.1:{peer.address[1]}"), core.address("udp"))
    await peer.next_message()  # 100
    request, transaction = await tu.next()
    assert transaction is not None
    transaction.respond(request.response(200, to_tag="ok"), retransmit_2xx=True)
    arrivals = [await peer.next() for _ in range(3)]
    assert {parse_message(data).status for _, data in arrivals} == {200}  # type: ignore[union-attr]
    assert arrivals[2][0] - arrivals[1][0] >= 2 * T1 * EARLY_SLACK
    peer.send(raw_request("ACK", f"127.0.0.1:{peer.address[1]}", branch="z9hG4bKnew",
                          to_tag="ok"), core.address("udp"))
    ack, none = await tu.next()
    assert ack.method == "ACK" and none is None
    assert transaction.acked
    while not peer.arrivals.empty():
        peer.arrivals.get_nowait()
    assert await peer.nothing_within(0.6)
    await until_no_transactions(core)


async def test_cancel_matches_the_invite_transaction(core: CorePeer, peer: RawUdpPeer) -> None:
    tu = ServerTu(core)
    via = f"127.0.0.1:{peer.address[1]}"
    peer.send(raw_request("INVITE", via, branch="z9hG4bKcancelme"), core.address("udp"))
    await peer.next_message()  # 100
    invite, invite_transaction = await tu.next()
    assert invite_transaction is not None and not invite_transaction.cancelled
    invite_transaction.respond(invite.response(180, to_tag="r"))
    await peer.next_message()
    peer.send(raw_request("CANCEL", via, branch="z9hG4bKcancelme"), core.address("udp"))
    cancel, cancel_transaction = await tu.next()
    assert cancel.method == "CANCEL" and cancel_transaction is not None
    assert cancel_transaction is not invite_transaction
    assert core.transactions.find_invite_for_cancel(
        cancel, cancel_transaction.flow) is invite_transaction
    assert invite_transaction.cancelled
    cancel_transaction.respond(cancel.response(200, to_tag="r"))
    invite_transaction.respond(invite.response(487, to_tag="r"))
    statuses = {(await peer.next_message()).cseq.method: None for _ in range(2)}
    assert set(statuses) == {"CANCEL", "INVITE"}
    peer.send(raw_request("ACK", via, branch="z9hG4bKcancelme", to_tag="r"), core.address("udp"))
    await until_no_transactions(core)
    unrelated = parse_message(raw_request("CANCEL", via, branch="z9hG4bKother").encode())
    assert core.transactions.find_invite_for_cancel(
        unrelated, cancel_transaction.flow) is None


async def test_a_cancel_from_another_source_cancels_nothing(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    # The same branch, Call-ID, tags and CSeq as the INVITE, but sent by a stranger's socket:
    # the INVITE stays uncancelled, and the core's own UAS logic answers the CANCEL 481.
    tu = ServerTu(core)
    via = f"127.0.0.1:{peer.address[1]}"
    peer.send(raw_request("INVITE", via, branch="z9hG4bKnotyours"), core.address("udp"))
    await peer.next_message()  # 100
    invite, invite_transaction = await tu.next()
    assert invite_transaction is not None
    invite_transaction.respond(invite.response(180, to_tag="r"))
    await peer.next_message()
    stranger = await RawUdpPeer.open()
    try:
        stranger.send(raw_request("CANCEL", via, branch="z9hG4bKnotyours"), core.address("udp"))
        cancel, cancel_transaction = await tu.next()
        assert cancel.method == "CANCEL" and cancel_transaction is not None
        assert core.transactions.find_invite_for_cancel(cancel, cancel_transaction.flow) is None
        assert not invite_transaction.cancelled
        # The call goes on: the INVITE is still answered to its caller.
        invite_transaction.respond(invite.response(200, to_tag="r"))
        answer = await peer.next_message()
        assert isinstance(answer, Response) and answer.status == 200
        assert answer.cseq.method == "INVITE"
    finally:
        stranger.close()


async def test_rfc2543_peer_without_magic_cookie_is_matched(
    core: CorePeer, peer: RawUdpPeer
) -> None:
    tu = ServerTu(core)
    via = f"127.0.0.1:{peer.address[1]}"
    invite = raw_request("INVITE", via, branch="old-style-1")
    peer.send(invite, core.address("udp"))
    await peer.next_message()  # 100
    request, transaction = await tu.next()
    assert transaction is not None
    transaction.respond(request.response(404, to_tag="nf"))
    assert (await peer.next_message()).status == 404  # type: ignore[union-attr]
    peer.send(invite, core.address("udp"))
    assert (await peer.next_message()).status == 404  # type: ignore[union-attr]
    peer.send(raw_request("ACK", via, branch="old-style-1", to_tag="nf"), core.address("udp"))
    await until_no_transactions(core)
    assert transaction.acked and tu.requests.empty()


# --- whole calls between two cores -------------------------------------------------------------
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_call_between_cores_leaves_no_transactions(transport: str) -> None:
    caller, callee = CorePeer(FAST), CorePeer(FAST)
    await caller.start()
    await callee.start()
    try:
        result = await caller.call(Target(transport, *callee.address(transport)))
        assert result.statuses == [100, 180, 200]
        assert result.bye_status == 200
        await asyncio.wait_for(callee.acks.get(), 5)
        assert [request.method for request in callee.requests] == ["INVITE", "ACK", "BYE"]
        await until_no_transactions(caller, callee)
    finally:
        await caller.close()
        await callee.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_cancelled_call_between_cores(transport: str) -> None:
    caller, callee = CorePeer(FAST), CorePeer(FAST, answer=False)
    await caller.start()
    await callee.start()
    try:
        target = Target(transport, *callee.address(transport))
        ringing = asyncio.get_running_loop().create_future()
        final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def on_invite_response(response: Response, _: ClientTransaction) -> None:
            if response.status == 180 and not ringing.done():
                ringing.set_result(None)
            elif response.status >= 200:
                final.set_result(response)

        invite = caller.new_request("INVITE", target)
        invite_transaction = caller.transactions.create_client(invite, target, on_invite_response)
        await asyncio.wait_for(ringing, 5)
        assert invite_transaction.flow is not None
        cancel_responses, _ = await caller.send(invite_transaction.cancel_request(),
                                                invite_transaction.flow)
        assert [response.status for response in cancel_responses] == [200]
        assert (await asyncio.wait_for(final, 5)).status == 487
        assert callee.server_transactions[0].cancelled
        await until_no_transactions(caller, callee)
        assert callee.server_transactions[0].acked  # the 487 was ACKed by the caller's layer
    finally:
        await caller.close()
        await callee.close()
