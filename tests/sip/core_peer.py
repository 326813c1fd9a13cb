"""A small UAS/UAC built only on sip.transport + sip.transaction, for tests against SIPp and
against raw sockets. It is a real endpoint: it answers, retransmits 2xx, sends ACK and BYE."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field

from sip.client_transaction import ClientTransaction
from sip.flow import Flow, Target
from sip.message import Request, Response, parse_message
from sip.resolver import Target as ResolvedTarget
from sip.server_transaction import ServerTransaction
from sip.timers import Timers
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer

_cseq = itertools.count(1)


@dataclass
class CallResult:
    statuses: list[int] = field(default_factory=list)
    bye_status: int | None = None


class CorePeer:
    """UAS: INVITE → 180, 200 (retransmitted until ACK), BYE/OPTIONS/other → 200.
    UAC: call() and request() send through client transactions."""

    def __init__(self, timers: Timers | None = None, *, answer: bool = True) -> None:
        self.transport = TransportLayer()
        self.transactions = TransactionLayer(self.transport, timers)
        self.transactions.on_request = self._on_request
        self.answer = answer
        self.requests: list[Request] = []
        self.acks: asyncio.Queue[Request] = asyncio.Queue()
        self.byes: asyncio.Queue[Request] = asyncio.Queue()
        self.server_transactions: list[ServerTransaction] = []

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.transport.listen_udp(host, 0)
        await self.transport.listen_tcp(host, 0)

    async def close(self) -> None:
        await self.transactions.close()
        await self.transport.close()

    def address(self, transport: str) -> tuple[str, int]:
        bound = self.transport.listening(transport)
        assert bound is not None, f"not listening on {transport}"
        return bound

    # --- UAS ---------------------------------------------------------------------------------
    def _on_request(self, request: Request, transaction: ServerTransaction | None) -> None:
        self.requests.append(request)
        if transaction is None:
            if request.method == "ACK":
                self.acks.put_nowait(request)
            return
        self.server_transactions.append(transaction)
        if request.method == "INVITE":
            tag = secrets.token_hex(4)
            transaction.respond(request.response(180, to_tag=tag))
            if self.answer:
                ok = request.response(200, to_tag=tag)
                ok.add("Contact", self._contact(transaction.flow))
                transaction.respond(ok, retransmit_2xx=True)
        elif request.method == "CANCEL":
            invite = self.transactions.find_invite_for_cancel(request, transaction.flow)
            transaction.respond(request.response(200 if invite else 481))
            if invite is not None and invite.last_response is not None:
                invite.respond(invite.request.response(487, to_tag=_to_tag(invite)))
        else:
            if request.method == "BYE":
                self.byes.put_nowait(request)
            transaction.respond(request.response(200, to_tag=secrets.token_hex(4)))

    def _contact(self, flow: Flow) -> str:
        host, port = flow.local
        return f"<sip:core@{host}:{port};transport={flow.transport}>"

    # --- UAC ---------------------------------------------------------------------------------
    def new_request(self, method: str, target: Target, *, call_id: str | None = None,
                    cseq: int | None = None, to_tag: str | None = None,
                    from_tag: str = "core") -> Request:
        transport = target.transport
        uri = f"sip:service@{target.host}:{target.port};transport={transport}"
        request = Request(method, uri)
        request.add("Via", self.transport.via_value(transport, self.transactions.new_branch()))
        request.add("Max-Forwards", "70")
        request.add("From", f"<sip:core@127.0.0.1>;tag={from_tag}")
        request.add("To", f"<sip:service@{target.host}>" + (f";tag={to_tag}" if to_tag else ""))
        request.add("Call-ID", call_id or secrets.token_hex(8))
        request.add("CSeq", f"{cseq if cseq is not None else next(_cseq)} {method}")
        host, port = self.address(transport)
        request.add("Contact", f"<sip:core@{host}:{port};transport={transport}>")
        return request

    async def send(self, request: Request, target: Target | Flow
                   ) -> tuple[list[Response], ClientTransaction]:
        """Run one client transaction; returns every response it passed up, final last."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        responses: list[Response] = []

        def on_response(response: Response, _: ClientTransaction) -> None:
            responses.append(response)
            if response.status >= 200 and not done.done():
                done.set_result(None)

        transaction = self.transactions.create_client(request, target, on_response)
        await done
        return responses, transaction

    async def call(self, target: ResolvedTarget) -> CallResult:
        """INVITE, ACK the 2xx (new branch, §13.2.2.4), BYE, as a UAC does."""
        result = CallResult()
        invite = self.new_request("INVITE", target)
        responses, transaction = await self.send(invite, target)
        result.statuses = [response.status for response in responses]
        final = responses[-1]
        if final.status >= 300:
            return result
        to_tag = final.to.tag
        assert transaction.flow is not None
        ack = self.new_request("ACK", target, call_id=invite.call_id, cseq=invite.cseq.number,
                               to_tag=to_tag)
        await self.transport.send_request(ack, transaction.flow)
        bye = self.new_request("BYE", target, call_id=invite.call_id, to_tag=to_tag)
        bye_responses, _ = await self.send(bye, transaction.flow)
        result.bye_status = bye_responses[-1].status
        return result


def _to_tag(transaction: ServerTransaction) -> str | None:
    last = transaction.last_response
    return last.to.tag if last is not None else None


class RawUdpPeer(asyncio.DatagramProtocol):
    """A bare UDP socket that records what arrives (with arrival times), for checking exactly
    what the core puts on the wire, retransmissions included."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> RawUdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.arrivals.put_nowait((asyncio.get_running_loop().time(), data))

    def send(self, data: bytes | str, destination: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(data.encode() if isinstance(data, str) else data, destination)

    async def next(self, timeout: float = 5.0) -> tuple[float, bytes]:
        return await asyncio.wait_for(self.arrivals.get(), timeout)

    async def next_message(self, timeout: float = 5.0) -> Request | Response:
        return parse_message((await self.next(timeout))[1])

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.arrivals.get(), seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def raw_request(method: str, via_sent_by: str, *, branch: str = "z9hG4bKraw1",
                call_id: str = "raw-call-1", cseq: int = 1, rport: bool = True,
                to_tag: str | None = None, extra: str = "") -> str:
    """A request as a third-party UA would write it by hand."""
    via_params = f";branch={branch}" + (";rport" if rport else "")
    to = "<sip:core@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:core@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_sent_by}{via_params}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:raw@127.0.0.1>;tag=raw\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
