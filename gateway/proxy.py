"""The proxy's policy (RFC 3261 §16): which requests it takes (§16.3 checks, our own Route
entries, in-dialog requests only between a dialog's two parties), who is calling (digest or
trunk trust), the dialogs it keeps and the media it anchors. Whom to call is gateway.targets;
forking and choosing the answer is gateway.forking, which calls back into a ProxiedRequest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sip.errors import SipError
from sip.flow import Flow
from sip.message import Request, Response
from sip.resolver import Target
from sip.tasks import TaskSet
from sip.transaction import ServerTransaction
from sip.transport import TransportLayer

from .auth import Authenticator
from .config import Config, Trunk
from .dialog_events import DialogEventNotifier
from .dialogs import (
    EARLY_DIALOG_LIFETIME,
    INVITE_DIALOG_LIFETIME,
    Dialog,
    DialogTable,
    Party,
    ReplacedParty,
    Replaces,
    subscription_lifetime,
)
from .flowtoken import DIALOG, HOP, FlowRef, FlowTokens
from .forking import DIALOG_METHODS, Branch, Forwarding, ForwardingEngine
from .location import Binding
from .media import Exchange, MediaAnchor
from .push.provider import PushKind, PushRequest
from .push.wakeup import DeviceWake, PushWaker
from .refusal import refusal
from .routing import (
    PLAIN,
    Destination,
    LocalAddresses,
    Side,
    TrunkTrust,
    loop_hash,
    side_of_sdp,
    side_of_transport,
)
from .targets import Targets
from .trunk_auth import answer_trunk_challenge

log = logging.getLogger(f"ws2sip.{__name__}")

# Identities a sender asserts or asks for (RFC 3325 §9, and Remote-Party-ID, its predecessor
# that PBXs still read): only trusted trunks may send them; toward a trunk the gateway asserts
# the authenticated user itself.
ASSERTED_IDENTITY_HEADERS = ("p-asserted-identity", "p-preferred-identity", "remote-party-id")
# New requests that wait for a sleeping push device (RFC 8599), and what its push announces.
WAKING_METHODS = {"INVITE": PushKind.INCOMING_CALL, "MESSAGE": PushKind.MESSAGE}


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    domain: str
    node_id: str
    public_address: str
    invite_timeout: float
    max_calls_per_user: int
    trunks: tuple[Trunk, ...]

    @classmethod
    def from_config(cls, config: Config, node_id: str) -> ProxyPolicy:
        return cls(
            domain=config.domain.lower(), node_id=node_id, public_address=config.public_address,
            invite_timeout=config.invite_timeout, max_calls_per_user=config.max_calls_per_user,
            trunks=config.trunks,
        )


class Proxy:
    def __init__(
        self, *, node_id: str, engine: ForwardingEngine, targets: Targets,
        transport: TransportLayer, auth: Authenticator, tokens: FlowTokens,
        addresses: LocalAddresses, trust: TrunkTrust, dialogs: DialogTable,
        media: MediaAnchor | None = None,
    ) -> None:
        self._node_id = node_id
        self._engine = engine
        self._targets = targets
        self._transport = transport
        self._auth = auth
        self._tokens = tokens
        self._addresses = addresses
        self._trust = trust
        self.dialogs = dialogs
        self.media = media
        self.tasks = TaskSet(log, "proxy task")
        # Answers SUBSCRIBE Event: dialog for local users (None: such requests are routed).
        self.dialog_events: DialogEventNotifier | None = None
        # Told of a flow whose sender proved itself without digest: another node's hop token
        # (the edge guard then lifts the flow's authentication deadline).
        self.on_peer_trusted: Callable[[Flow], None] = _no_flow_observer
        # Wakes sleeping push devices (RFC 8599); None: push is not configured.
        self.waker: PushWaker | None = None

    def trust_trunks(self, trunks: tuple[Trunk, ...]) -> None:
        """A reload's trunks: which sources speak for which trunk, from the next request on."""
        self._trust = TrunkTrust(trunks)

    # --- entry points ------------------------------------------------------------------------

    async def handle_request(self, request: Request, server: ServerTransaction) -> None:
        """A new request that is not for the registrar: route it or answer it."""
        try:
            await self._route(request, server)
        except SipError as error:
            if error.status >= 500:
                log.warning("%s %s: %d %s", request.method, request.call_id, error.status,
                            error.reason)
            else:
                log.info("%s %s from %s: %d %s", request.method, request.call_id,
                         server.flow.remote, error.status, error.reason)
            server.respond(refusal(request, error))

    def handle_stateless(self, request: Request, flow: Flow) -> None:
        """ACK for a 2xx (end to end, no transaction): on to the dialog's other party."""
        if request.method != "ACK":
            return
        self.tasks.spawn(self._forward_ack(request, flow))

    def flow_closed(self, flow: Flow) -> None:
        """A browser that lost its WebSocket has left its calls: free their media."""
        for dialog in self.dialogs.on_flow(flow.id):
            if dialog.method == "INVITE":
                log.info("%s closed: releasing call %s", flow.id, dialog.call_id)
                self.dialogs.release(dialog.call_id, "flow_closed")
        if self.dialog_events is not None:
            self.dialog_events.flow_closed(flow.id)

    # --- routing -----------------------------------------------------------------------------
    async def _route(self, request: Request, server: ServerTransaction) -> None:
        if request.method == "CANCEL":
            self._engine.cancel(request, server)
            return
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            raise SipError(483, "Too Many Hops")
        self._check_loop(request)
        unsupported = request.option_tags("proxy-require")
        if unsupported:
            raise SipError(
                420, "Bad Extension", headers=[("Unsupported", ", ".join(sorted(unsupported)))]
            )
        tokens = self._pop_own_routes(request)
        from_trunk = self._trust.trunk_of(server.flow) is not None
        if request.to.tag is not None:
            if not from_trunk:
                _strip_asserted_identity(request)
            if self.dialog_events is not None and self.dialog_events.owns(request):
                self.dialog_events.in_dialog(request, server)
                return
            await self._route_in_dialog(request, server, tokens)
            return
        # Another node of the cluster hands us a request for a flow we hold. Only a hop token
        # does that; a Record-Route token replayed in a new request opens nothing: the request
        # is routed as any other, with digest or trunk trust.
        hop = self._tokens.decode(tokens[-1], request.call_id, HOP) if tokens else None
        if hop is not None:
            self.on_peer_trusted(server.flow)
            # The node that took the request in from outside has already stripped it.
            await self._deliver_internal(request, server, hop)
            return
        if not from_trunk:
            _strip_asserted_identity(request)
        await self._route_initial(request, server)

    def _check_loop(self, request: Request) -> None:
        marker = "." + loop_hash(request)
        # Only a raw Via value carrying our loop marker is worth parsing (most carry none).
        if not any(marker in value for value in request.get_all("via")):
            return
        # Every Via, the top one included: a request we sent straight back to ourselves (a
        # trunk whose address is ours) carries our Via on top.
        for via in request.vias:
            branch = via.branch or ""
            if branch.endswith(marker) and self._is_our_via(via.host, via.port):
                raise SipError(482, "Loop Detected")

    def _is_our_via(self, host: str, port: int | None) -> bool:
        return host.lower() in self._addresses.hosts and (port is None or port in
                                                          self._addresses.ports)

    def _pop_own_routes(self, request: Request) -> list[str]:
        """Remove our own Route entries from the top (two when we double Record-Routed) and
        return the flow tokens they carried, top first."""
        tokens: list[str] = []
        while True:
            routes = request.name_addrs("route")
            if not routes or not self._addresses.is_local_uri(routes[0].uri):
                return tokens
            token = self._addresses.flow_token(routes[0])
            if token is not None:
                tokens.append(token)
            request.remove_first_value("route")

    async def _deliver_internal(
        self, request: Request, server: ServerTransaction, flow_ref: FlowRef
    ) -> None:
        if flow_ref.node_id != self._node_id:
            raise SipError(403, "Flow token for another node")
        flow = self._transport.flow_by_id(flow_ref.flow_id)
        if flow is None or flow.closed:
            raise SipError(430, "Flow Failed")
        destination = Destination(request.uri, flow, side=side_of_transport(flow.transport))
        proxied = ProxiedRequest(self, request)
        if request.method in DIALOG_METHODS:
            proxied.dialog = self.dialogs.add(
                Dialog(request.call_id, request.method), _lifetime(request)
            )
        await self._forward(proxied, server, [destination], record_route=True)

    async def _route_initial(self, request: Request, server: ServerTransaction) -> None:
        if request.method in ("BYE", "PRACK", "ACK"):
            raise SipError(481, "Call/Transaction Does Not Exist")
        trunk = self._trust.trunk_of(server.flow)
        if request.method == "NOTIFY" and trunk is None:
            # Outside a subscription only a PBX's unsolicited MWI is expected: a user may not
            # light another user's voicemail lamp.
            raise SipError(403, "Forbidden (NOTIFY outside a subscription: trunks only)")
        caller_aor: str | None = None
        if trunk is None:
            caller_aor = await self._auth.authenticate_caller(request, server)
            if caller_aor is None:
                return
            if request.method == "REFER":
                await self._authorise_refer(request, caller_aor)
        notifier = self.dialog_events
        if notifier is not None and notifier.is_dialog_subscribe(request) and \
                await self._is_local_user(request):
            notifier.subscribe(request, server, request.ruri)
            return
        replaced = self._replaced_party(request)
        sleeping: list[Binding] = []
        if replaced is not None:
            destinations = [await self._replacement_destination(request, replaced)]
            callee_aor = replaced.aor
        else:
            wakes = self.waker is not None and request.method in WAKING_METHODS
            destinations, callee_aor, sleeping = await self._targets.route(request, trunk,
                                                                           wakes=wakes)
        proxied = ProxiedRequest(self, request, asserted_identity=caller_aor)
        proxied.replaced = replaced.dialog if replaced is not None else None
        created: Dialog | None = None
        if request.method in DIALOG_METHODS:
            dialog_trunk = next((d.trunk for d in destinations if d.trunk), None) or trunk
            self._targets.check_limits(request, caller_aor, callee_aor, dialog_trunk,
                                       replacing=replaced is not None)
            created = Dialog(request.call_id, request.method, caller=caller_aor,
                             callee=callee_aor, trunk=dialog_trunk.name if dialog_trunk else None)
            proxied.dialog = self.dialogs.add(created, _lifetime(request))
            if proxied.dialog is created:
                self.dialogs.report(created, "trying")
        try:
            await self._forward(proxied, server, destinations, record_route=True,
                                sleeping=sleeping, callee_aor=callee_aor)
        except SipError:
            # Refused before any branch went out (e.g. 488 for a malformed SDP offer): the
            # dialog this request created, and the media session it holds, go with it. One that
            # already existed under that Call-ID is not this request's to end.
            if created is not None and proxied.dialog is created and not created.confirmed:
                self.dialogs.release(created.call_id, "refused")
            raise

    async def _is_local_user(self, request: Request) -> bool:
        """A user of this gateway named by its AoR (not a GRUU: that names one device)."""
        uri = request.ruri
        if not self._targets.is_local_domain(uri) or self._targets.resolve_gruu(uri) is not None:
            return False
        return await self._auth.user_exists(uri.user_decoded or "")

    # --- transfer (RFC 3515 REFER, RFC 3891 Replaces) -------------------------------------------
    async def _authorise_refer(self, request: Request, referrer: str | None) -> None:
        """A REFER from a user is authorised as that user's INVITE would be: its Refer-To must
        be something the user could call (one of our users or GRUUs, a trunk's number) or a
        call of ours its Replaces names; otherwise 403, and nobody is asked to call anyone.
        Referred-By (RFC 3892) is the authenticated user, never what the sender wrote."""
        refer_to = request.name_addrs("refer-to")
        if len(refer_to) != 1:
            raise SipError(400, "Bad Request (a REFER needs exactly one Refer-To)")
        target = refer_to[0].uri
        replaces = Replaces.in_uri_headers(target.headers)
        known_call = replaces is not None and \
            self.dialogs.replaced_party(replaces) is not None
        if not known_call and not await self._targets.may_reach(target):
            raise SipError(403, f"Forbidden (Refer-To {target.host[:80]} is not reachable "
                                f"for {referrer or 'this party'})")
        if referrer is not None:
            request.set("Referred-By", f"<{referrer}>")
        # Without a user of ours (the dialog came through another node, which has set it),
        # Referred-By stays as it came.

    def _replaced_party(self, request: Request) -> ReplacedParty | None:
        """For an INVITE with Replaces naming one of our calls: the party that receives it."""
        if request.method != "INVITE":
            return None
        value = request.get("replaces")
        replaces = Replaces.parse(value) if value else None
        if replaces is None:
            return None
        replaced = self.dialogs.replaced_party(replaces)
        if replaced is None or replaced.party.trunk is not None:
            return None  # not ours, or a trunk's party: routed as any other INVITE
        return replaced

    async def _replacement_destination(
        self, request: Request, replaced: ReplacedParty
    ) -> Destination:
        """The very device of the replaced call, whatever the Request-URI (a Refer-To may
        name a device's own Contact, a .invalid WebSocket address): on this node its flow or
        address, on another node through that node with a hop token for this Call-ID."""
        party = replaced.party
        if party.node_flow is not None:
            return await self._targets.via_node(request.uri, party.node_flow, replaced.side,
                                                request.call_id)
        return Destination(request.uri, party.target, side=replaced.side, aor=replaced.aor)

    # --- in-dialog requests ------------------------------------------------------------------
    async def _route_in_dialog(
        self, request: Request, server: ServerTransaction, tokens: list[str]
    ) -> None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        receiver = self._dialog_receiver(dialog, request, server.flow, tokens)
        if request.method == "REFER" and self._trust.trunk_of(server.flow) is None:
            from_caller = request.from_.tag == dialog.caller_tag
            await self._authorise_refer(request,
                                        dialog.caller if from_caller else dialog.callee)
        destination = Destination(await self._in_dialog_ruri(request, receiver), receiver.target)
        if request.method == "BYE":
            self.dialogs.extend(dialog, EARLY_DIALOG_LIFETIME)
        elif request.method == "SUBSCRIBE":  # a refresh (or Expires: 0, an unsubscribe)
            self.dialogs.extend(dialog, subscription_lifetime(request.expires))
        proxied = ProxiedRequest(self, request, dialog=dialog)
        proxied.sender_side, destination.side = _sides_in_dialog(dialog, request)
        await self._forward(proxied, server, [destination], record_route=False,
                            cseq_offset=_cseq_offset(dialog, request))

    def _dialog_receiver(
        self, dialog: Dialog, request: Request, flow: Flow, tokens: list[str]
    ) -> Party:
        """The party an in-dialog request goes to. It must name the dialog by both tags (481
        otherwise), come from the other party's own flow or address, and carry only flow tokens
        issued for this dialog (403 otherwise). The Request-URI never chooses the next hop."""
        from_tag = request.from_.tag
        to_tag = request.to.tag
        sender: Party | None = None
        receiver: Party | None = None
        if from_tag is not None and from_tag == dialog.caller_tag:
            sender = dialog.caller_party
            receiver = dialog.callee_parties.get(to_tag or "")
        elif from_tag is not None and to_tag == dialog.caller_tag:
            receiver = dialog.caller_party
            sender = dialog.callee_parties.get(from_tag)
            if sender is None:
                # A NOTIFY ahead of its SUBSCRIBE's 2xx: from one of the request's branches.
                sender = next((p for p in dialog.branch_parties if self._sent_by(p, flow)), None)
                if sender is not None:
                    dialog.learn_callee(from_tag, sender)
        if sender is None or receiver is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        if not self._sent_by(sender, flow):
            raise SipError(403, "Forbidden (not a party of this dialog)")
        for token in tokens:
            if self._tokens.decode(token, request.call_id, DIALOG) is None:
                raise SipError(403, "Forbidden (flow token not issued for this dialog)")
        return receiver

    async def _in_dialog_ruri(self, request: Request, receiver: Party) -> str:
        """The Request-URI toward the receiver: unchanged, unless the peer lost our route and
        named one of our GRUUs, which is retargeted to that device's contact."""
        uri = request.ruri
        gruu = self._targets.resolve_gruu(uri)
        if gruu is not None:
            for candidate in await self._targets.gruu_destinations(uri, gruu, request.call_id):
                if receiver.is_at(candidate.target):
                    return candidate.ruri
        return request.uri

    def _sent_by(self, party: Party, flow: Flow) -> bool:
        if party.sent(flow):
            return True
        trunk = self._trust.trunk_of(flow) if party.trunk is not None else None
        return trunk is not None and trunk.name == party.trunk

    async def _forward_ack(self, ack: Request, flow: Flow) -> None:
        try:
            tokens = self._pop_own_routes(ack)
            if self._trust.trunk_of(flow) is None:
                _strip_asserted_identity(ack)
            dialog = self.dialogs.get(ack.call_id)
            if dialog is None:
                log.debug("ACK for unknown dialog %s dropped", ack.call_id)
                return
            receiver = self._dialog_receiver(dialog, ack, flow, tokens)
            destination = Destination(await self._in_dialog_ruri(ack, receiver), receiver.target)
            out = self._engine.branch_request(ack, destination, None, record_route=False,
                                              cseq_offset=_cseq_offset(dialog, ack))
            if dialog.media is not None and self.media is not None:
                sender, _ = _sides_in_dialog(dialog, ack)
                await self.media.ack(dialog, out, sender)
            await self._transport.send_request(out, destination.target)
        except SipError as error:
            log.info("ACK %s not relayed: %s", ack.call_id, error.reason)

    # --- forwarding ----------------------------------------------------------------------------
    async def _forward(
        self, proxied: ProxiedRequest, server: ServerTransaction,
        destinations: list[Destination], *, record_route: bool, cseq_offset: int = 0,
        sleeping: list[Binding] | None = None, callee_aor: str | None = None,
    ) -> None:
        """Fork to `destinations`; push bindings in `sleeping` are woken (RFC 8599) and
        joined as branches when they register again."""
        request = proxied.request
        forwarding = self._engine.begin(request, server, proxied)
        incoming = server.flow
        dialog = proxied.dialog
        if dialog is not None and request.to.tag is None:
            proxied.creates_dialog = True
            proxied.sender_side = side_of_sdp(request.body, incoming.transport)
            dialog.caller_side = proxied.sender_side
            dialog.caller_tag = request.from_.tag
            dialog.caller_party = self._party_of(incoming)
            self.dialogs.attach_flow(dialog, incoming.id)
        sides = [d.side for d in destinations]
        if sleeping:
            sides.extend(side_of_transport(b.transport) for b in sleeping)
        proxied.anchored_offer = await self._media_offer(proxied, sides)
        waker = self.waker
        if sleeping and waker is not None and callee_aor is not None:
            # Held before the first branch starts: the live branches' answers cannot end the
            # request while the woken device may still come.
            self._engine.hold(forwarding)
            # The request adds the woken devices' branches to its forwarding; wake_over lets go
            # of it (and of the wake) when the wait ends, so that no cycle outlives the request.
            proxied.forwarding = forwarding
            self._engine.fork(forwarding, destinations, record_route=record_route,
                              cseq_offset=cseq_offset)
            self._engine.provisional(forwarding, 180, "Ringing")
            push = PushRequest(WAKING_METHODS[request.method], request.call_id,
                               _caller_of(request), callee_aor)
            proxied.wake = waker.start(callee_aor, sleeping, push, proxied.reach_awake,
                                       proxied.wake_over)
            return
        self._engine.fork(forwarding, destinations, record_route=record_route,
                          cseq_offset=cseq_offset)

    async def _media_offer(self, proxied: ProxiedRequest, sides: list[Side]) -> bytes | None:
        """The rewritten offer for branches of the other media side (None: none needed, or a
        late offer). In a dialog only an already anchored call is anchored again."""
        dialog = proxied.dialog
        request = proxied.request
        if dialog is None or self.media is None or request.method not in ("INVITE", "UPDATE"):
            return None
        if request.to.tag is not None and dialog.media is None:
            return None
        other = next((side for side in sides if side != proxied.sender_side), None)
        if other is None:
            return None
        started = await self.media.offer(dialog, request, proxied.sender_side, other)
        if started is None:
            return None
        proxied.exchange, body = started
        return body

    def _party_of(self, flow: Flow) -> Party:
        """The party that sent a dialog-creating request on `flow`: reached again on that flow
        when it is a connection, at its source address over UDP (an idle UDP flow is
        forgotten; the address stays)."""
        trunk = self._trust.trunk_of(flow)
        host, port = flow.remote
        target: Flow | Target = flow if flow.reliable else Target(flow.transport, host, port)
        return Party(target, trunk.name if trunk is not None else None)


class ProxiedRequest:
    """One request the proxy forwards: its dialog and media state, and what the proxy does at
    each step the forwarding engine reports (forking.BranchHooks)."""

    __slots__ = ("_proxy", "request", "dialog", "creates_dialog", "sender_side", "exchange",
                 "anchored_offer", "asserted_identity", "replaced", "_parties", "forwarding",
                 "wake")

    def __init__(
        self, proxy: Proxy, request: Request, *, dialog: Dialog | None = None,
        asserted_identity: str | None = None,
    ) -> None:
        self._proxy = proxy
        self.request = request
        self.dialog = dialog
        self.creates_dialog = False  # a dialog-creating request (not in a dialog yet)
        self.sender_side: Side = PLAIN  # media side of whoever sent the request
        self.exchange: Exchange | None = None  # the offer/answer crossing the anchor, if any
        self.anchored_offer: bytes | None = None  # the offer for branches of the other side
        self.asserted_identity = asserted_identity  # the caller's AoR, asserted to trunks
        self.replaced: Dialog | None = None  # the call an INVITE with Replaces takes over
        # The callee side of each branch of a dialog-creating request (None for others).
        self._parties: dict[Branch, Party] | None = None
        self.forwarding: Forwarding | None = None  # while it waits for woken devices
        self.wake: DeviceWake | None = None  # waking sleeping push devices for it, if any

    async def reach_awake(self, binding: Binding) -> bool:
        """A woken device registered again (`binding`, on its new flow): a branch toward it.
        False when the request no longer wants it (answered, cancelled, unreachable)."""
        forwarding = self.forwarding
        if forwarding is None or forwarding.answered or forwarding.cancelled:
            return False
        proxy = self._proxy
        try:
            destination = await proxy._targets.binding_destination(binding, self.request.call_id)
        except SipError as error:
            log.info("woken binding %s of %s unusable: %s", binding.contact, binding.aor,
                     error.reason)
            return False
        return proxy._engine.add_branches(forwarding, [destination], record_route=True)

    def wake_over(self) -> None:
        """The wait for sleeping devices ended: without any branch, the request fails."""
        forwarding, self.forwarding, self.wake = self.forwarding, None, None
        if forwarding is not None:
            self._proxy._engine.release(forwarding, 480,
                                        "Temporarily Unavailable (device did not wake up)")

    def _stop_waking(self, *, cancelled: bool) -> None:
        # The wake ends on its own task and then calls wake_over, which lets go of both.
        if self.wake is not None:
            self.wake.stop(cancelled=cancelled)

    def on_branch_request(self, branch: Branch) -> None:
        destination = branch.destination
        out = branch.request
        if self.anchored_offer is not None and destination.side != self.sender_side:
            out.set_body(self.anchored_offer, "application/sdp")
        if destination.trunk is not None and self.asserted_identity is not None:
            out.set("P-Asserted-Identity", f"<{self.asserted_identity}>")
        dialog = self.dialog
        if dialog is not None and self.creates_dialog:
            party = Party(destination.target,
                          destination.trunk.name if destination.trunk else None,
                          node_flow=destination.node_flow)
            if self._parties is None:
                self._parties = {}
            self._parties[branch] = party
            dialog.branch_parties.append(party)

    def on_branch_response(self, branch: Branch, response: Response) -> None:
        status = response.status
        parties = self._parties
        if 100 < status < 300 and self.dialog is not None and parties is not None:
            party = parties.get(branch)
            tag = response.to.tag
            if party is not None and tag is not None:
                self.dialog.learn_callee(tag, party)
            if status < 200 and self.request.to.tag is None:
                self._proxy.dialogs.report(self.dialog, "early")

    def on_challenge(self, branch: Branch, challenge: Response) -> Request | None:
        """A trunk with credentials challenged the gateway: answer it (once). The caller's side
        of the dialog is shifted by the retry's higher CSeq toward the trunk from then on."""
        trunk = branch.destination.trunk
        if trunk is None:
            return None
        retry = answer_trunk_challenge(branch.request, trunk, challenge)
        if retry is not None and self.dialog is not None and self.request.to.tag is None:
            # The retry's CSeq is one above what this branch sent.
            sent = branch.request.cseq.number
            self.dialog.trunk_cseq_offset = sent + 1 - self.request.cseq.number
        return retry

    async def before_upstream(self, branch: Branch, response: Response) -> None:
        exchange = self.exchange
        responder = branch.destination.side
        media = self._proxy.media
        if exchange is None or self.dialog is None or media is None or \
                responder == self.sender_side:
            return
        try:
            await media.response(self.dialog, exchange, response, responder)
        except SipError as error:
            log.warning("media for %s failed: %s", self.request.call_id, error.reason)
            if 200 <= response.status < 300:
                # The call is up on the far side but we cannot bridge it: say so upstream
                # rather than sending SDP the caller cannot use.
                response.set_body(b"")

    def on_answered(self, winner: Branch) -> None:
        self._stop_waking(cancelled=False)
        dialog = self.dialog
        if dialog is None or self.request.to.tag is not None:
            return
        proxy = self._proxy
        proxy.dialogs.confirm(dialog)
        proxy.dialogs.report(dialog, "confirmed")
        dialog.callee_side = winner.destination.side
        if isinstance(winner.destination.target, Flow):
            proxy.dialogs.attach_flow(dialog, winner.destination.target.id)
        proxy.dialogs.extend(dialog, INVITE_DIALOG_LIFETIME)
        media = proxy.media
        if dialog.media is not None and media is not None and \
                dialog.callee_side == dialog.caller_side:
            # A branch of the caller's own side won a mixed fork: no anchor needed.
            proxy.tasks.spawn(media.release(dialog))
        replaced = self.replaced
        if replaced is not None:
            # The new call took the old one's place (RFC 3891): its media anchor goes now, and
            # the dialog itself is kept only long enough for the BYEs that end it.
            proxy.dialogs.extend(replaced, EARLY_DIALOG_LIFETIME)
            if media is not None:
                proxy.tasks.spawn(media.release(replaced))

    def on_final(self, response: Response) -> None:
        self._stop_waking(cancelled=False)
        dialog = self.dialog
        if dialog is None:
            return
        failed_to_create = response.status >= 300 and self.request.to.tag is None and \
            not dialog.confirmed
        if failed_to_create:
            self._proxy.dialogs.release(dialog.call_id, "failed", response.status)
        elif self.request.method == "BYE":
            self._proxy.dialogs.release(dialog.call_id, "bye")
        elif dialog.method == "SUBSCRIBE":
            self._follow_subscription(dialog, response)

    def _follow_subscription(self, dialog: Dialog, response: Response) -> None:
        """Keep a subscription's dialog as long as the notifier says (RFC 6665 §4.1.2.1): the
        Expires its SUBSCRIBE was granted, the expires of each NOTIFY; and end it with the
        NOTIFY whose Subscription-State is terminated."""
        request = self.request
        dialogs = self._proxy.dialogs
        if request.method == "SUBSCRIBE" and 200 <= response.status < 300:
            if response.expires is not None:
                dialogs.extend(dialog, subscription_lifetime(response.expires))
        elif request.method == "NOTIFY":
            state, _, params = (request.get("subscription-state") or "").partition(";")
            if state.strip().lower() == "terminated":
                dialogs.release(dialog.call_id, "subscription_terminated")
            elif 200 <= response.status < 300:
                expires = _param(params, "expires")
                if expires is not None:
                    dialogs.extend(dialog, subscription_lifetime(expires))

    def on_cancelled(self) -> None:
        self._stop_waking(cancelled=True)


def _caller_of(request: Request) -> str:
    """Who calls, for the push's text: the From display name, else its address."""
    sender = request.from_
    return sender.display or sender.uri.address_of_record


def _no_flow_observer(flow: Flow) -> None:
    """Proxy.on_peer_trusted until the application sets it."""


def _strip_asserted_identity(request: Request) -> None:
    for name in ASSERTED_IDENTITY_HEADERS:
        if request.has(name):
            request.remove(name)


def _param(params: str, name: str) -> int | None:
    """An integer parameter of a header's `;a=1;b=2` tail (None: absent or not a number)."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == name and value.strip().isdigit():
            return int(value.strip())
    return None


def _lifetime(request: Request) -> float:
    if request.method == "INVITE":
        return EARLY_DIALOG_LIFETIME
    return subscription_lifetime(request.expires)


def _sides_in_dialog(dialog: Dialog, request: Request) -> tuple[Side, Side]:
    """(sender side, receiver side) of an in-dialog request, by who sent the dialog's INVITE."""
    if request.from_.tag == dialog.caller_tag:
        return dialog.caller_side, dialog.callee_side
    return dialog.callee_side, dialog.caller_side


def _cseq_offset(dialog: Dialog, request: Request) -> int:
    """The CSeq shift for the caller's requests toward a trunk that made us authenticate."""
    if request.from_.tag == dialog.caller_tag:
        return dialog.trunk_cseq_offset
    return 0
