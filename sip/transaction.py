"""The transaction layer (RFC 3261 §17, RFC 6026): matches messages to client and server
transactions, absorbs retransmissions and hands the rest to the transaction user (TU)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from .branch import is_rfc3261_branch, new_branch
from .client_transaction import ClientTransaction
from .flow import Flow, Target
from .message import Request, Response
from .server_transaction import ServerKey, ServerTransaction
from .tasks import TaskSet
from .timers import TimedTransaction, Timers, TransactionHost
from .transport import OVERLOAD_RETRY_AFTER, TransportLayer

__all__ = ["ClientTransaction", "ServerTransaction", "Timers", "TransactionLayer"]

log: Final = logging.getLogger(f"ws2sip.{__name__}")
DEFAULT_MAX_TRANSACTIONS: Final = 20_000


def _unhandled_request(request: Request, transaction: ServerTransaction | None) -> None:
    log.warning("no TU: answering %s with 500", request.method)
    if transaction is not None:
        transaction.respond(request.response(500, "No Transaction User"))


def _unhandled_response(response: Response, flow: Flow) -> None:
    log.debug("stray %d response from %s dropped", response.status, flow.id)


class TransactionLayer(TransactionHost):
    def __init__(
        self, transport: TransportLayer, timers: Timers | None = None, *,
        trying_after_tu: bool = False, max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
    ) -> None:
        super().__init__(transport, timers or Timers())
        # False: an INVITE's 100 goes out before the TU sees it. True: right after the TU's
        # first step (same loop turn, well within §17.2.1's 200 ms), so that a TU answering at
        # once, e.g. with a stateless challenge, sends one response and no 100.
        self.trying_after_tu = trying_after_tu
        # Server + client transactions; past it new requests are answered 503 statelessly.
        self.max_transactions = max_transactions
        self.on_request: Callable[[Request, ServerTransaction | None], None] = _unhandled_request
        self.on_stray_response: Callable[[Response, Flow], None] = _unhandled_response
        # An ACK that matches no INVITE server transaction (the ACK of a 2xx, end to end): a
        # proxy needs the flow it came on to know who sent it. By default the TU's on_request.
        self.on_stray_ack: Callable[[Request, Flow], None] = self._ack_to_core
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        # UAS 2xx retransmissions wait for an ACK that has its own branch (§13.3.1.4): matched
        # by Call-ID and CSeq number instead.
        self._awaiting_ack: dict[tuple[str, int], ServerTransaction] = {}
        self._tasks = TaskSet(log, "transaction task")
        transport.on_message = self._on_message

    @staticmethod
    def new_branch() -> str:
        return new_branch()

    @property
    def transaction_count(self) -> int:
        """Live client + server transactions and 2xx awaiting their ACK (0 when all is done)."""
        return len(self._clients) + len(self._servers) + len(self._awaiting_ack)

    # --- client side -------------------------------------------------------------------------
    def create_client(
        self,
        request: Request,
        target: Target | Flow,
        on_response: Callable[[Response, ClientTransaction], None],
    ) -> ClientTransaction:
        transaction = ClientTransaction(self, request, target, on_response)
        if transaction.key in self._clients:
            raise ValueError(f"A client transaction {transaction.key} already exists")
        self._clients[transaction.key] = transaction
        transaction.start()
        return transaction

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coroutine)

    def forget(self, transaction: TimedTransaction) -> None:
        if isinstance(transaction, ServerTransaction):
            self._forget_server(transaction)
        elif (isinstance(transaction, ClientTransaction)
              and self._clients.get(transaction.key) is transaction):
            del self._clients[transaction.key]

    # --- server side -------------------------------------------------------------------------
    def find_invite_for_cancel(self, cancel: Request, flow: Flow) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL that arrived on `flow` cancels (§9.2).

        Besides the transaction key, the CANCEL must come over the INVITE's own flow (UDP: from
        its source address), where a UAC sends it (§9.1): the branch is no secret to those who
        saw the INVITE, and a stranger who learned it must not end someone else's call."""
        invite = self._servers.get(_server_key(cancel, "INVITE"))
        if invite is None or not (invite.flow is flow or invite.flow.id == flow.id):
            return None
        return invite

    def await_ack(self, transaction: TimedTransaction) -> None:
        if not isinstance(transaction, ServerTransaction):
            raise TypeError(f"only a server transaction awaits an ACK, not {transaction!r}")
        request = transaction.request
        self._awaiting_ack[(request.call_id, request.cseq.number)] = transaction

    def _forget_server(self, transaction: ServerTransaction) -> None:
        if self._servers.get(transaction.id) is transaction:
            del self._servers[transaction.id]
        if not self._awaiting_ack:
            return  # nearly always: only a UAS core's 2xx to an INVITE waits for its ACK here
        request = transaction.request
        ack_key = (request.call_id, request.cseq.number)
        if self._awaiting_ack.get(ack_key) is transaction:
            del self._awaiting_ack[ack_key]

    # --- dispatch ----------------------------------------------------------------------------
    def _on_message(self, message: Request | Response, flow: Flow) -> None:
        if isinstance(message, Response):
            self._on_response(message, flow)
        else:
            self._on_request(message, flow)

    def _on_response(self, response: Response, flow: Flow) -> None:
        branch = response.top_via.branch
        transaction = self._clients.get((branch, response.cseq.method)) if branch else None
        if transaction is not None:
            transaction.receive_response(response)
        else:
            self.on_stray_response(response, flow)

    def _on_request(self, request: Request, flow: Flow) -> None:
        method = request.method
        if method == "ACK":
            self._on_ack(request, flow)
            return
        key = _server_key(request, method)
        transaction = self._servers.get(key)
        if transaction is not None:
            transaction.handle_retransmission()
            return
        if len(self._clients) + len(self._servers) >= self.max_transactions:
            self._refuse_over_capacity(request, flow)
            return
        transaction = self._servers[key] = ServerTransaction(self, request, flow, key)
        if method == "INVITE":
            # §17.2.1: a 100 at once stops the client's timer A while the TU (often a proxy
            # waiting on the next hop) takes its time.
            if self.trying_after_tu:
                self.on_request(request, transaction)
                # Queued after the first step of any task the TU started for it.
                self.loop.call_soon(transaction.send_trying)
                return
            transaction.send_trying()
        elif method == "CANCEL":
            invite = self.find_invite_for_cancel(request, flow)
            if invite is not None:
                invite.mark_cancelled()
        self.on_request(request, transaction)

    def _refuse_over_capacity(self, request: Request, flow: Flow) -> None:
        """503 with Retry-After, sent statelessly: a full table keeps nothing more."""
        self.transport.log_overload(f"transaction table full ({self.max_transactions})")
        response = request.response(503, "Service Unavailable (too many transactions)",
                                     to_tag=request.stable_tag())
        response.add("Retry-After", str(OVERLOAD_RETRY_AFTER))
        self.transport.send_response(response, flow)

    def _on_ack(self, ack: Request, flow: Flow) -> None:
        transaction = self._servers.get(_server_key(ack, "INVITE"))
        if transaction is not None and transaction.handle_ack():
            return
        waiting = self._awaiting_ack.pop((ack.call_id, ack.cseq.number), None)
        if waiting is not None:
            waiting.ack_received()
        self.on_stray_ack(ack, flow)

    def _ack_to_core(self, ack: Request, flow: Flow) -> None:
        self.on_request(ack, None)

    async def close(self) -> None:
        for transaction in list(self._clients.values()):
            transaction.terminate()
        for server in list(self._servers.values()):
            server.terminate()
        self._tasks.cancel_all()


def _server_key(request: Request, method: str) -> ServerKey:
    """§17.2.3: branch + sent-by + method (ACK → INVITE, passed by the caller); RFC 2543 peers
    without the magic cookie are matched on the request's identifying headers instead."""
    via = request.top_via
    branch = via.branch
    if is_rfc3261_branch(branch):
        assert branch is not None
        return (branch, via.sent_by.lower(), method)
    # ACK for a non-2xx carries the To tag the response added, so To is left out.
    return ("rfc2543", request.uri, request.from_.tag or "", request.call_id,
            str(request.cseq.number), str(via), method)
