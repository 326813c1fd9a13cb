"""The forwarding engine of a transaction-stateful proxy (RFC 3261 §16.6-16.10): one request
forked to the destinations it is given, a client transaction per branch, provisional responses
relayed, the best final response chosen (§16.7), CANCEL, the INVITE timeout and merged
challenges. Whom to call, who may call and what to do with the call's dialog and media is
policy (gateway.proxy): it reaches the engine only through the BranchHooks of each request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Protocol

from sip.branch import is_signed_branch, signed_branch
from sip.errors import SipError
from sip.flow import Flow, format_address
from sip.message import Request, Response
from sip.tasks import TaskSet
from sip.transaction import ClientTransaction, ServerTransaction, TransactionLayer
from sip.transport import TransportLayer

from .refusal import refusal_of
from .routing import WEBRTC_TRANSPORTS, Destination, LocalAddresses, loop_hash, upstream_hop

log = logging.getLogger(f"ws2sip.{__name__}")

# Requests that create a dialog: the proxy Record-Routes them to stay on the dialog's path.
DIALOG_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
MAX_FORWARDS = 70


class BranchHooks(Protocol):
    """What the policy does at each step of one forwarded request."""

    def on_branch_request(self, branch: Branch) -> None:
        """A branch's request is built and about to be sent: rewrite its SDP, add headers."""

    def on_branch_response(self, branch: Branch, response: Response) -> None:
        """Any response a branch received, before the engine acts on it."""

    def on_challenge(self, branch: Branch, challenge: Response) -> Request | None:
        """A branch answered 401/407: the request to retry it with, credentials added (its Via
        is the engine's to replace), or None to treat the challenge as the branch's final."""

    async def before_upstream(self, branch: Branch, response: Response) -> None:
        """A 1xx/2xx is about to be relayed upstream (in arrival order): rewrite its SDP."""

    def on_answered(self, winner: Branch) -> None:
        """An INVITE was answered 2xx by `winner`; the other branches are being cancelled."""

    def on_final(self, response: Response) -> None:
        """A final response went upstream: the best of the branches' (3xx-6xx), the 480 of the
        INVITE timeout, or a non-INVITE request's 2xx."""

    def on_cancelled(self) -> None:
        """The caller CANCELled the INVITE (before a final response): its branches are being
        cancelled; whatever holds the forwarding open (hold()) should let go."""


@dataclass(eq=False, slots=True)
class Branch:
    destination: Destination
    request: Request
    client: ClientTransaction | None = None
    provisional: bool = False
    final: Response | None = None
    cancel_wanted: bool = False
    authenticated: bool = False  # already retried with credentials after a challenge


@dataclass(eq=False, slots=True)
class Forwarding:
    """One proxied request: its server transaction and every branch it forked into."""

    request: Request
    server: ServerTransaction
    hooks: BranchHooks
    branches: list[Branch] = field(default_factory=list)
    answered: bool = False  # a final response went upstream
    cancelled: bool = False  # the caller sent CANCEL
    # Branches the policy may still add (hold()/release()): no final response is chosen while
    # any is pending, even when every branch so far has answered or none was started.
    holds: int = 0
    timer: asyncio.TimerHandle | None = None
    # Responses wait for before_upstream; the lock keeps them in arrival order (183 before 200).
    response_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ForwardingEngine:
    def __init__(
        self, transactions: TransactionLayer, transport: TransportLayer,
        addresses: LocalAddresses, secret: bytes, invite_timeout: float,
    ) -> None:
        self._transactions = transactions
        self._transport = transport
        self._addresses = addresses
        # Our Via branches are signed (Call-ID and the upstream Via): a 2xx arriving after its
        # transaction ended is relayed only if it answers a request we really forwarded.
        self._branch_key = hmac.digest(secret, b"ws2sip via branch", "sha256")
        self._invite_timeout = invite_timeout
        self._forwardings: dict[ServerTransaction, Forwarding] = {}
        self._tasks = TaskSet(log, "response relay")

    def close(self) -> None:
        for forwarding in list(self._forwardings.values()):
            if forwarding.timer is not None:
                forwarding.timer.cancel()
        self._tasks.cancel_all()

    # --- forwarding (§16.6) ------------------------------------------------------------------
    def begin(self, request: Request, server: ServerTransaction, hooks: BranchHooks) -> Forwarding:
        """Take charge of a request: from now on a CANCEL for it finds it (fork() sends it)."""
        forwarding = Forwarding(request, server, hooks)
        self._forwardings[server] = forwarding

        def forget() -> None:
            self._forwardings.pop(server, None)

        server.on_terminated = forget
        return forwarding

    def fork(
        self, forwarding: Forwarding, destinations: list[Destination], *, record_route: bool,
        cseq_offset: int = 0,
    ) -> None:
        """A branch per destination, all started at once; `cseq_offset` shifts their CSeq (a
        dialog whose INVITE a trunk made us authenticate)."""
        request = forwarding.request
        self.add_branches(forwarding, destinations, record_route=record_route,
                          cseq_offset=cseq_offset)
        if request.method == "INVITE" and self._invite_timeout > 0 and request.to.tag is None:
            forwarding.timer = asyncio.get_running_loop().call_later(
                self._invite_timeout, self._on_invite_timeout, forwarding
            )

    def add_branches(
        self, forwarding: Forwarding, destinations: list[Destination], *, record_route: bool,
        cseq_offset: int = 0,
    ) -> bool:
        """Start a branch per destination, now or later (a held forwarding); False, and nothing
        started, once the request was answered or cancelled."""
        if forwarding.answered or forwarding.cancelled:
            return False
        request = forwarding.request
        incoming = forwarding.server.flow
        hooks = forwarding.hooks
        added: list[Branch] = []
        for destination in destinations:
            branch = Branch(destination, self.branch_request(
                request, destination, incoming, record_route=record_route,
                cseq_offset=cseq_offset,
            ))
            hooks.on_branch_request(branch)
            forwarding.branches.append(branch)
            added.append(branch)
        for branch in added:
            self._start_branch(forwarding, branch)
        return True

    def hold(self, forwarding: Forwarding) -> None:
        """Branches may still be added: keep the request open until release()."""
        forwarding.holds += 1

    def release(self, forwarding: Forwarding, status: int, reason: str) -> None:
        """The end of one hold(). With no branch at all, the request is answered `status`
        (487 once cancelled); otherwise as its branches' best final response."""
        forwarding.holds -= 1
        if forwarding.holds > 0 or forwarding.answered:
            return
        if forwarding.branches:
            self._maybe_finish(forwarding)
            return
        if forwarding.cancelled:
            status, reason = 487, "Request Terminated"
        forwarding.answered = True
        if forwarding.timer is not None:
            forwarding.timer.cancel()
            forwarding.timer = None
        response = refusal_of(forwarding.request, status, reason)
        forwarding.server.respond(response)
        forwarding.hooks.on_final(response)

    def provisional(self, forwarding: Forwarding, status: int, reason: str) -> None:
        """A provisional response of the proxy's own upstream (e.g. 180 while a device is
        woken), with the request's stable To-tag and no Contact: it creates no early dialog."""
        request = forwarding.request
        if forwarding.answered or request.method != "INVITE":
            return
        forwarding.server.respond(request.response(status, reason, to_tag=request.stable_tag()))

    def branch_request(
        self, request: Request, destination: Destination, incoming: Flow | None, *,
        record_route: bool, cseq_offset: int = 0,
    ) -> Request:
        """The request as forwarded toward `destination` (also for ACKs of 2xx, statelessly)."""
        out = request.copy()
        out.uri = destination.ruri
        if cseq_offset:
            out.set("CSeq", f"{request.cseq.number + cseq_offset} {request.cseq.method}")
        max_forwards = request.max_forwards
        out.set("Max-Forwards", str(MAX_FORWARDS if max_forwards is None else max_forwards - 1))
        if record_route and incoming is not None and request.method in DIALOG_METHODS:
            call_id = request.call_id
            inbound = self._addresses.record_route(incoming.transport, call_id, incoming)
            outbound_flow = destination.target if isinstance(destination.target, Flow) else None
            outbound = self._addresses.record_route(destination.transport, call_id, outbound_flow)
            # Two entries when the transport changes (WS in, UDP out), so that in-dialog
            # requests from either side come back in on the right interface (RFC 5658).
            if inbound != outbound:
                out.prepend("Record-Route", inbound)
            out.prepend("Record-Route", outbound)
        for route in reversed(destination.routes):
            out.prepend("Route", route)
        out.prepend("Via", self._via(destination, self._branch(request)))
        return out

    def _branch(self, request: Request) -> str:
        """Our branch for a request forwarded on: signed for its upstream hop, then the loop
        marker (§16.6 step 8)."""
        signed = signed_branch(self._branch_key, upstream_hop(request.call_id, request.top_via))
        return f"{signed}.{loop_hash(request)}"

    def _via(self, destination: Destination, branch: str) -> str:
        transport = destination.transport
        if transport in WEBRTC_TRANSPORTS and isinstance(destination.target, Flow):
            host, port = destination.target.local
            host = self._addresses.public_address or host
            sent_by = format_address((host, port))
            return f"SIP/2.0/{transport.upper()} {sent_by};branch={branch};rport"
        return self._transport.via_value(transport, branch)

    def _start_branch(self, forwarding: Forwarding, branch: Branch) -> None:
        def on_response(response: Response, client: ClientTransaction) -> None:
            self._on_branch_response(forwarding, branch, response)

        try:
            branch.client = self._transactions.create_client(
                branch.request, branch.destination.target, on_response
            )
        except SipError as error:
            branch.final = branch.request.response(error.status, error.reason)
            self._maybe_finish(forwarding)

    # --- responses (§16.7) -------------------------------------------------------------------
    def _on_branch_response(
        self, forwarding: Forwarding, branch: Branch, response: Response
    ) -> None:
        status = response.status
        hooks = forwarding.hooks
        hooks.on_branch_response(branch, response)
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted:
                self._send_cancel(branch)
            if status == 100 or forwarding.answered:
                return
        elif branch.final is not None and status < 300:
            pass  # a 2xx retransmission through the transaction: forward again
        elif status in (401, 407) and self._retry_challenged(forwarding, branch, response):
            return
        elif branch.final is None:
            branch.final = response
        upstream = response.copy()
        upstream.remove_first_value("via")
        if not upstream.vias:
            return  # §16.7 step 3: a response to a request we originated (our CANCEL)
        if upstream.cseq.number != forwarding.request.cseq.number:
            upstream.set("CSeq", str(forwarding.request.cseq))  # undo a retry's higher CSeq
        if status < 300:
            self._tasks.spawn(self._relay_upstream(forwarding, branch, upstream))
            if 200 <= status < 300 and forwarding.request.method == "INVITE":
                self._answered(forwarding, branch)
            elif status >= 200:
                forwarding.answered = True
                hooks.on_final(upstream)
            return
        if status >= 600:
            self._cancel_branches(forwarding, except_branch=branch)
        self._maybe_finish(forwarding)

    async def _relay_upstream(
        self, forwarding: Forwarding, branch: Branch, response: Response
    ) -> None:
        async with forwarding.response_lock:
            await forwarding.hooks.before_upstream(branch, response)
            forwarding.server.respond(response)

    def _answered(self, forwarding: Forwarding, winner: Branch) -> None:
        forwarding.answered = True
        if forwarding.timer is not None:
            forwarding.timer.cancel()
            forwarding.timer = None
        self._cancel_branches(forwarding, except_branch=winner)
        forwarding.hooks.on_answered(winner)

    def _maybe_finish(self, forwarding: Forwarding) -> None:
        if forwarding.answered or forwarding.holds > 0 or not forwarding.branches or \
                any(b.final is None for b in forwarding.branches):
            return
        best = best_response([b.final for b in forwarding.branches if b.final is not None])
        forwarding.answered = True
        if forwarding.timer is not None:
            forwarding.timer.cancel()
        upstream = best.copy()
        upstream.remove_first_value("via")
        if upstream.status == 503:
            upstream = forwarding.request.response(500, "Server Internal Error (upstream 503)")
        _merge_challenges(forwarding, upstream)
        forwarding.server.respond(upstream)
        forwarding.hooks.on_final(upstream)

    def _retry_challenged(
        self, forwarding: Forwarding, branch: Branch, challenge: Response
    ) -> bool:
        """Resend a challenged branch once, with the credentials the policy adds, in a new
        client transaction (a new Via branch)."""
        if branch.authenticated or forwarding.answered:
            return False
        retry = forwarding.hooks.on_challenge(branch, challenge)
        if retry is None:
            return False
        retry.remove_first_value("via")
        retry.prepend("Via", self._via(branch.destination, self._branch(forwarding.request)))
        branch.request = retry
        branch.authenticated = True
        branch.provisional = False
        self._start_branch(forwarding, branch)
        return True

    def on_stray_response(self, response: Response, flow: Flow) -> None:
        """The transaction layer's on_stray_response. 2xx retransmissions after the client
        transaction ended: relay statelessly, only when our top Via's branch is one we signed
        for the Via below it (anything else is forged or not ours, and would make us a
        reflector)."""
        if response.status < 200 or response.status >= 300:
            return
        try:
            vias = response.vias
            ours = len(vias) >= 2 and is_signed_branch(
                vias[0].branch, self._branch_key, upstream_hop(response.call_id, vias[1]))
        except SipError:
            ours = False
        if not ours:
            log.debug("stray %d for %s from %s dropped: not a branch of ours", response.status,
                      response.call_id, flow.remote)
            return
        upstream = response.copy()
        upstream.remove_first_value("via")
        if not upstream.vias:
            return
        self._transport.send_response(upstream, self._flow_for_via(upstream))

    def _flow_for_via(self, response: Response) -> Flow | None:
        via = response.top_via
        if via.transport.lower() in WEBRTC_TRANSPORTS:
            received = via.params.get("received")
            rport = via.params.get("rport")
            if received and rport and rport.isdigit():
                return self._transport.connection(via.transport.lower(), received, int(rport))
        return None

    # --- CANCEL (§16.10) ---------------------------------------------------------------------
    def cancel(self, cancel: Request, server: ServerTransaction) -> None:
        invite_server = self._transactions.find_invite_for_cancel(cancel, server.flow)
        forwarding = self._forwardings.get(invite_server) if invite_server else None
        if forwarding is None:
            server.respond(refusal_of(cancel, 481, "Call/Transaction Does Not Exist"))
            return
        server.respond(cancel.response(200))
        if forwarding.answered or forwarding.cancelled:
            return
        forwarding.cancelled = True
        forwarding.hooks.on_cancelled()
        self._cancel_branches(forwarding, except_branch=None)

    def _cancel_branches(self, forwarding: Forwarding, except_branch: Branch | None) -> None:
        if forwarding.request.method != "INVITE":
            return
        for branch in forwarding.branches:
            if branch is except_branch or branch.final is not None or branch.cancel_wanted:
                continue
            branch.cancel_wanted = True
            if branch.provisional:
                self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        if branch.client is None or branch.final is not None:
            return
        cancel = branch.client.cancel_request()
        branch.cancel_wanted = False
        self._transactions.create_client(cancel, branch.destination.target, _ignore_response)

    def _on_invite_timeout(self, forwarding: Forwarding) -> None:
        forwarding.timer = None
        if forwarding.answered:
            return
        log.info("INVITE %s: no answer within %.0f s", forwarding.request.call_id,
                 self._invite_timeout)
        self._cancel_branches(forwarding, except_branch=None)
        forwarding.answered = True
        response = refusal_of(forwarding.request, 480, "Temporarily Unavailable (no answer)")
        forwarding.server.respond(response)
        forwarding.hooks.on_final(response)


def _ignore_response(response: Response, client: ClientTransaction) -> None:
    """Responses to our own CANCELs need no action: the INVITE's 487 ends the branch."""


def _merge_challenges(forwarding: Forwarding, upstream: Response) -> None:
    """§16.7 step 7: a 401/407 upstream carries the challenges of every branch that sent one."""
    if upstream.status not in (401, 407):
        return
    for branch in forwarding.branches:
        final = branch.final
        if final is None or final.status not in (401, 407):
            continue
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            for value in final.get_all(name):
                if value not in upstream.get_all(name):
                    upstream.add(name, value)


_CLASS_PREFERENCE = {6: 0, 2: 1, 3: 3, 4: 4, 5: 5}


def best_response(finals: list[Response]) -> Response:
    """§16.7 step 6: any 6xx; else the lowest class, preferring 401/407 and 415/420/484 among
    4xx, and avoiding 503 (which becomes 500 upstream)."""

    def rank(response: Response) -> tuple[int, int]:
        status = response.status
        klass = _CLASS_PREFERENCE.get(status // 100, 9)
        preferred = 0 if status in (401, 407, 415, 420, 484) else 1
        if status == 408:
            preferred = 2
        return klass, preferred

    return min(finals, key=rank)
