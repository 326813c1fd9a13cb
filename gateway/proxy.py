"""Transaction-stateful proxy (RFC 3261 §16) between browsers, phones, trunks and other nodes."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from dataclasses import dataclass, field

from sip.branch import is_signed_branch, signed_branch
from sip.digest import build_authorization, select_challenge
from sip.errors import SipError
from sip.flow import Flow
from sip.message import Request, Response
from sip.resolver import Target
from sip.transaction import ClientTransaction, ServerTransaction, TransactionLayer
from sip.transport import TransportLayer
from sip.uri import SipUri

from .auth import Authenticator
from .config import Config, Trunk
from .dialogs import (
    EARLY_DIALOG_LIFETIME,
    INVITE_DIALOG_LIFETIME,
    Dialog,
    DialogTable,
    Party,
    subscription_lifetime,
)
from .flowtoken import DIALOG, HOP, FlowRef, FlowTokens
from .flowtoken import PARAM as FLOW_PARAM
from .gruu import Gruus, GruuTarget
from .location import Binding, LocationService
from .media import Exchange, MediaAnchor
from .routing import (
    WEBRTC_TRANSPORTS,
    Destination,
    LocalAddresses,
    TrunkTrust,
    loop_hash,
    side_of_sdp,
    upstream_hop,
)
from .tasks import TaskSet

log = logging.getLogger("ws2sip.proxy")

DIALOG_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
NO_AUTH_METHODS = frozenset(("ACK", "CANCEL", "BYE", "PRACK"))
MAX_FORWARDS = 70
# Identities a sender asserts or asks for (RFC 3325 §9, and Remote-Party-ID, its predecessor
# that PBXs still read): only trusted trunks may send them; toward a trunk the gateway asserts
# the authenticated user itself.
ASSERTED_IDENTITY_HEADERS = ("p-asserted-identity", "p-preferred-identity", "remote-party-id")


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


@dataclass(eq=False, slots=True)
class Branch:
    destination: Destination
    request: Request
    client: ClientTransaction | None = None
    provisional: bool = False
    final: Response | None = None
    cancel_wanted: bool = False
    authenticated: bool = False  # already answered a trunk's digest challenge
    party: Party | None = None  # the callee side of a dialog-creating request's branch


@dataclass(eq=False, slots=True)
class Forwarding:
    """One proxied request: its server transaction and every branch it forked into."""

    request: Request
    server: ServerTransaction
    branches: list[Branch] = field(default_factory=list)
    answered: bool = False  # a final response went upstream
    timer: asyncio.TimerHandle | None = None
    dialog: Dialog | None = None
    sender_kind: str = "plain"  # media kind of whoever sent the request
    exchange: Exchange | None = None  # the offer/answer crossing the media anchor, if any
    cseq_offset: int = 0  # added toward a trunk that made us authenticate the dialog's INVITE
    asserted_identity: str | None = None  # the authenticated caller's AoR, asserted to trunks
    # Responses wait for SDP rewriting; the lock keeps them in arrival order (183 before 200).
    response_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Proxy:
    def __init__(
        self,
        policy: ProxyPolicy,
        transactions: TransactionLayer,
        transport: TransportLayer,
        location: LocationService,
        auth: Authenticator,
        secret: bytes,
        media: MediaAnchor | None = None,
    ) -> None:
        self.policy = policy
        self._transactions = transactions
        self._transport = transport
        self._location = location
        self._auth = auth
        self._tokens = FlowTokens(secret)
        # Our Via branches are signed (Call-ID and the upstream Via): a 2xx arriving after its
        # transaction ended is relayed only if it answers a request we really forwarded.
        self._branch_key = hmac.digest(secret, b"ws2sip via branch", "sha256")
        self.gruus = Gruus(secret)
        self.addresses = LocalAddresses(
            policy.domain, policy.public_address, self._tokens, policy.node_id
        )
        self._media = media
        self.dialogs = DialogTable(self._release_dialog)
        self._forwardings: dict[ServerTransaction, Forwarding] = {}
        self._trust = TrunkTrust(policy.trunks)
        self._trunk_matchers = [
            (re.compile(trunk.match), trunk) for trunk in policy.trunks if trunk.match
        ]
        self._tasks = TaskSet(log, "proxy task")
        transactions.on_stray_response = self._on_stray_response

    @property
    def local_hosts(self) -> set[str]:
        return self.addresses.hosts

    def add_listener(self, transport: str, host: str, port: int) -> None:
        self.addresses.add_listener(transport, host, port)

    @property
    def media_sessions(self) -> int:
        return self._media.relay.active_sessions if self._media is not None else 0

    async def media_relay_close(self) -> None:
        if self._media is not None:
            await self._media.relay.close()

    async def close(self) -> None:
        for forwarding in list(self._forwardings.values()):
            if forwarding.timer is not None:
                forwarding.timer.cancel()
        for dialog in self.dialogs.all():
            self.dialogs.release(dialog.call_id)
        self.dialogs.close()
        await asyncio.sleep(0)

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
            self._reply(server, request, error.status, error.reason, error.headers)

    def handle_stateless(self, request: Request, flow: Flow) -> None:
        """ACK for a 2xx (end to end, no transaction): on to the dialog's other party."""
        if request.method != "ACK":
            return
        self._tasks.spawn(self._forward_ack(request, flow))

    def flow_closed(self, flow: Flow) -> None:
        """A browser that lost its WebSocket has left its calls: free their media."""
        for dialog in self.dialogs.on_flow(flow.id):
            if dialog.method == "INVITE":
                log.info("%s closed: releasing call %s", flow.id, dialog.call_id)
                self.dialogs.release(dialog.call_id)

    # --- routing -----------------------------------------------------------------------------
    async def _route(self, request: Request, server: ServerTransaction) -> None:
        if request.method == "CANCEL":
            self._cancel(request, server)
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
            await self._route_in_dialog(request, server, tokens)
            return
        # Another node of the cluster hands us a request for a flow we hold. Only a hop token
        # does that; a Record-Route token replayed in a new request opens nothing: the request
        # is routed as any other, with digest or trunk trust.
        hop = self._tokens.decode(tokens[-1], request.call_id, HOP) if tokens else None
        if hop is not None:
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
        return host.lower() in self.addresses.hosts and (port is None or port in
                                                         self.addresses.ports)

    def _pop_own_routes(self, request: Request) -> list[str]:
        """Remove our own Route entries from the top (two when we double Record-Routed) and
        return the flow tokens they carried, top first."""
        tokens: list[str] = []
        while True:
            routes = request.name_addrs("route")
            if not routes or not self.addresses.is_local_uri(routes[0].uri):
                return tokens
            token = self.addresses.flow_token(routes[0])
            if token is not None:
                tokens.append(token)
            request.remove_first_value("route")

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
        gruu = self.gruus.resolve(uri) if self._is_local_domain(uri) else None
        if gruu is not None:
            for candidate in await self._gruu_destinations(uri, gruu, request.call_id):
                if receiver.is_at(candidate.target):
                    return candidate.ruri
        return request.uri

    def _sent_by(self, party: Party, flow: Flow) -> bool:
        if party.sent(flow):
            return True
        trunk = self._trust.trunk_of(flow) if party.trunk is not None else None
        return trunk is not None and trunk.name == party.trunk

    async def _route_in_dialog(
        self, request: Request, server: ServerTransaction, tokens: list[str]
    ) -> None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is None:
            raise SipError(481, "Call/Transaction Does Not Exist")
        receiver = self._dialog_receiver(dialog, request, server.flow, tokens)
        destination = Destination(await self._in_dialog_ruri(request, receiver), receiver.target)
        if request.method == "BYE":
            self.dialogs.extend(dialog, EARLY_DIALOG_LIFETIME)
        elif request.method == "SUBSCRIBE":  # a refresh (or Expires: 0, an unsubscribe)
            self.dialogs.extend(dialog, subscription_lifetime(request.expires))
        forwarding = Forwarding(request, server, dialog=dialog)
        forwarding.sender_kind, destination.kind = _kinds_in_dialog(dialog, request)
        forwarding.cseq_offset = _cseq_offset(dialog, request)
        await self._forward(forwarding, [destination], record_route=False)

    async def _via_node(
        self, ruri: str, flow_ref: FlowRef, kind: str, call_id: str
    ) -> Destination:
        nodes = await self._location.live_nodes()
        node = nodes.get(flow_ref.node_id)
        if node is None or not node.sip_address:
            raise SipError(480, f"Node {flow_ref.node_id} holding the flow is gone")
        uri = SipUri.parse(f"sip:{node.sip_address}")
        target = await self._resolve(uri)
        # The hop token is what makes the other node deliver without a challenge of its own.
        token = self._tokens.encode(flow_ref, call_id, HOP)
        route = f"<sip:{node.sip_address};lr;{FLOW_PARAM}={token}>"
        return Destination(ruri, target, routes=[route], kind=kind)

    async def _deliver_internal(
        self, request: Request, server: ServerTransaction, flow_ref: FlowRef
    ) -> None:
        if flow_ref.node_id != self.policy.node_id:
            raise SipError(403, "Flow token for another node")
        flow = self._transport.flow_by_id(flow_ref.flow_id)
        if flow is None or flow.closed:
            raise SipError(430, "Flow Failed")
        destination = Destination(request.uri, flow, kind=_kind(flow.transport))
        forwarding = Forwarding(request, server)
        if request.method in DIALOG_METHODS:
            forwarding.dialog = self.dialogs.add(
                Dialog(request.call_id, request.method), _lifetime(request)
            )
        await self._forward(forwarding, [destination], record_route=True)

    async def _route_initial(self, request: Request, server: ServerTransaction) -> None:
        if request.method in ("BYE", "PRACK", "ACK"):
            raise SipError(481, "Call/Transaction Does Not Exist")
        trunk = self._trust.trunk_of(server.flow)
        caller_aor: str | None = None
        if trunk is None:
            caller_aor = await self._authenticate_user(request, server)
            if caller_aor is None:
                return
        ruri = request.ruri
        destinations: list[Destination]
        callee_aor: str | None = None
        if self._is_local_domain(ruri):
            gruu = self.gruus.resolve(ruri)
            if gruu is not None:
                # Only the named instance, never its AoR's other devices nor a trunk (§8.4.1).
                callee_aor = gruu.aor
                destinations = await self._gruu_destinations(ruri, gruu, request.call_id)
            else:
                callee_aor = ruri.address_of_record
                destinations = await self._local_destinations(callee_aor, request.call_id)
                if not destinations and trunk is None:
                    destinations = self._trunk_destinations(request, ruri)
                if not destinations:
                    raise SipError(*await self._why_unreachable(ruri))
        elif trunk is not None:
            raise SipError(403, "Trunks may only reach local users")
        else:
            destinations = self._trunk_destinations(request, ruri)
            if not destinations:
                raise SipError(403, f"Relaying to {ruri.host} is not allowed")
        forwarding = Forwarding(request, server, asserted_identity=caller_aor)
        created: Dialog | None = None
        if request.method in DIALOG_METHODS:
            dialog_trunk = next((d.trunk for d in destinations if d.trunk), None) or trunk
            self._check_limits(request, caller_aor, callee_aor, dialog_trunk)
            created = Dialog(request.call_id, request.method, caller=caller_aor,
                             callee=callee_aor, trunk=dialog_trunk.name if dialog_trunk else None)
            forwarding.dialog = self.dialogs.add(created, _lifetime(request))
        try:
            await self._forward(forwarding, destinations, record_route=True)
        except SipError:
            # Refused before any branch went out (e.g. 488 for a malformed SDP offer): the
            # dialog this request created, and the media session it holds, go with it. One that
            # already existed under that Call-ID is not this request's to end.
            if created is not None and forwarding.dialog is created and not created.confirmed:
                self.dialogs.release(created.call_id)
            raise

    async def _authenticate_user(self, request: Request, server: ServerTransaction) -> str | None:
        """The caller's AoR, or None when a challenge or refusal was sent."""
        if request.method in NO_AUTH_METHODS:
            raise SipError(403, f"{request.method} outside a dialog")
        outcome = await self._auth.authenticate(request, proxy=True)
        if outcome.refusal is not None:
            server.respond_statelessly(outcome.refusal)  # no 407 retransmissions to amplify
            return None
        from_uri = request.from_.uri
        aor = f"sip:{outcome.username}@{self.policy.domain}"
        if from_uri.address_of_record != aor:
            log.warning("%s from %s: From %s does not match authenticated user %s",
                        request.method, server.flow.remote, from_uri.address_of_record, aor)
            raise SipError(403, "From identity does not match the authenticated user")
        request.remove("proxy-authorization")
        return aor

    def _is_local_domain(self, uri: SipUri) -> bool:
        return uri.host.lower() == self.policy.domain or self.addresses.is_local_uri(uri)

    async def _local_destinations(self, aor: str, call_id: str) -> list[Destination]:
        return await self._destinations(
            await self._location.lookup(_domain_aor(aor, self.policy.domain)), call_id
        )

    async def _destinations(self, bindings: list[Binding], call_id: str) -> list[Destination]:
        """A branch per binding; a binding that cannot be reached is logged and left out."""
        destinations: list[Destination] = []
        for binding in bindings:
            try:
                destinations.append(await self._binding_destination(binding, call_id))
            except SipError as error:
                log.info("binding %s of %s unusable: %s", binding.contact, binding.aor,
                         error.reason)
        return destinations

    async def _gruu_destinations(
        self, ruri: SipUri, gruu: GruuTarget, call_id: str
    ) -> list[Destination]:
        """The bindings of the GRUU's instance; 480 when it has none (§8.4.1), 404 for a
        temporary GRUU whose instance registered again with a new Call-ID (§5.3)."""
        bindings = await self._location.lookup(_domain_aor(gruu.aor, self.policy.domain))
        destinations = await self._destinations(
            [b for b in bindings if gruu.admits(b.instance_id, b.call_id)], call_id
        )
        if destinations:
            return destinations
        if gruu.temporary and any(gruu.names_instance(b.instance_id) for b in bindings):
            raise SipError(404, "Not Found (temporary GRUU replaced by a new registration)")
        if not gruu.temporary and (await self._why_unreachable(ruri))[0] == 404:
            raise SipError(404, "Not Found")
        raise SipError(480, "Temporarily Unavailable (GRUU instance not registered)")

    async def _binding_destination(self, binding: Binding, call_id: str) -> Destination:
        kind = _kind(binding.transport)
        if binding.transport == "udp":
            # Connectionless: any node reaches the client at the address it registered from.
            host, _, port = binding.received.rpartition(":")
            destination = Destination(binding.contact, Target("udp", host.strip("[]"), int(port)),
                                      kind=kind)
        elif binding.node_id != self.policy.node_id:
            destination = await self._via_node(
                binding.contact, FlowRef(binding.node_id, binding.connection_id), kind, call_id
            )
        else:
            flow = self._transport.flow_by_id(binding.connection_id)
            if flow is not None and not flow.closed:
                destination = Destination(binding.contact, flow, kind=kind)
            else:
                target = await self._resolve(SipUri.parse(binding.contact))
                destination = Destination(binding.contact, target, kind=kind)
        if binding.path:
            destination.routes = list(binding.path) + destination.routes
        destination.aor = binding.aor
        return destination

    def _trunk_destinations(self, request: Request, ruri: SipUri) -> list[Destination]:
        number = ruri.user_decoded or ""
        for matcher, trunk in self._trunk_matchers:
            if matcher.fullmatch(number):
                dialled = number.removeprefix(trunk.strip_prefix)
                host, _, port = trunk.address.rpartition(":")
                uri = f"sip:{dialled}@{trunk.address}"
                if trunk.transport != "udp":
                    uri += f";transport={trunk.transport}"
                target = Target(trunk.transport, host.strip("[]"), int(port))
                return [Destination(uri, target, kind="plain", trunk=trunk)]
        return []

    async def _why_unreachable(self, ruri: SipUri) -> tuple[int, str]:
        user = ruri.user_decoded or ""
        if await self._auth.user_exists(user):
            return 480, "Temporarily Unavailable (not registered)"
        return 404, "Not Found"

    def _check_limits(
        self, request: Request, caller: str | None, callee: str | None, trunk: Trunk | None
    ) -> None:
        if request.method != "INVITE":
            return
        limit = self.policy.max_calls_per_user
        if limit and caller and self.dialogs.calls_of_user(caller) >= limit:
            raise SipError(503, f"Call limit of {limit} reached for {caller}")
        if limit and callee and self.dialogs.calls_of_user(callee) >= limit:
            raise SipError(486, "Busy Here (call limit reached)")
        if trunk and trunk.max_calls and \
                self.dialogs.calls_of_trunk(trunk.name) >= trunk.max_calls:
            raise SipError(503, f"Trunk {trunk.name} call limit reached")

    async def _resolve(self, uri: SipUri) -> Target:
        resolver = self._transport.resolver
        transport = uri.transport
        if uri.host.endswith(".invalid"):
            raise SipError(480, f"Unroutable contact host {uri.host}")
        if resolver is None:
            return Target(transport or "udp", uri.host, uri.port or 5060)
        targets = await resolver.resolve(
            uri.params.get("maddr") or uri.host, port=uri.port, transport=transport,
            secure=uri.secure,
        )
        if not targets:
            raise SipError(503, f"No route to {uri}")
        return targets[0]

    # --- forwarding (§16.6) ------------------------------------------------------------------
    async def _forward(
        self, forwarding: Forwarding, destinations: list[Destination], *, record_route: bool
    ) -> None:
        request = forwarding.request
        server = forwarding.server
        self._forwardings[server] = forwarding

        def forget() -> None:
            self._forwardings.pop(server, None)

        server.on_terminated = forget
        incoming = server.flow
        dialog = forwarding.dialog
        creates_dialog = request.to.tag is None and dialog is not None
        if dialog is not None and creates_dialog:
            forwarding.sender_kind = side_of_sdp(request.body, incoming.transport)
            dialog.caller_kind = forwarding.sender_kind
            dialog.caller_tag = request.from_.tag
            dialog.caller_party = self._party_of(incoming)
            self.dialogs.attach_flow(dialog, incoming.id)
        anchored_offer = await self._media_offer(forwarding, destinations)
        for destination in destinations:
            branch_request = self._branch_request(
                request, destination, incoming, record_route=record_route,
                cseq_offset=forwarding.cseq_offset,
            )
            if anchored_offer is not None and destination.kind != forwarding.sender_kind:
                branch_request.set_body(anchored_offer, "application/sdp")
            if destination.trunk is not None and forwarding.asserted_identity is not None:
                branch_request.set("P-Asserted-Identity", f"<{forwarding.asserted_identity}>")
            branch = Branch(destination, branch_request)
            if dialog is not None and creates_dialog:
                branch.party = Party(destination.target,
                                     destination.trunk.name if destination.trunk else None)
                dialog.branch_parties.append(branch.party)
            forwarding.branches.append(branch)
        for branch in list(forwarding.branches):
            self._start_branch(forwarding, branch)
        if request.method == "INVITE" and self.policy.invite_timeout > 0 and \
                request.to.tag is None:
            forwarding.timer = asyncio.get_running_loop().call_later(
                self.policy.invite_timeout, self._invite_timeout, forwarding
            )

    def _branch_request(
        self, request: Request, destination: Destination, incoming: Flow | None, *,
        record_route: bool, cseq_offset: int = 0,
    ) -> Request:
        out = request.copy()
        out.uri = destination.ruri
        if cseq_offset:
            out.set("CSeq", f"{request.cseq.number + cseq_offset} {request.cseq.method}")
        max_forwards = request.max_forwards
        out.set("Max-Forwards", str(MAX_FORWARDS if max_forwards is None else max_forwards - 1))
        if record_route and incoming is not None and request.method in DIALOG_METHODS:
            call_id = request.call_id
            inbound = self.addresses.record_route(incoming.transport, call_id, incoming)
            outbound_flow = destination.target if isinstance(destination.target, Flow) else None
            outbound = self.addresses.record_route(destination.transport, call_id, outbound_flow)
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
            host = self.policy.public_address or host
            return f"SIP/2.0/{transport.upper()} {_hostport(host, port)};branch={branch};rport"
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
        if branch.party is not None and forwarding.dialog is not None and 100 < status < 300:
            tag = response.to.tag
            if tag is not None:
                forwarding.dialog.learn_callee(tag, branch.party)
        if status < 200:
            branch.provisional = True
            if branch.cancel_wanted:
                self._send_cancel(branch)
            if status == 100 or forwarding.answered:
                return
        elif branch.final is not None and status < 300:
            pass  # a 2xx retransmission through the transaction: forward again
        elif status in (401, 407) and self._answer_trunk_challenge(forwarding, branch, response):
            return
        elif branch.final is None:
            branch.final = response
        upstream = response.copy()
        upstream.remove_first_value("via")
        if not upstream.vias:
            return  # §16.7 step 3: a response to a request we originated (our CANCEL)
        if upstream.cseq.number != forwarding.request.cseq.number:
            upstream.set("CSeq", str(forwarding.request.cseq))  # undo a trunk-auth offset
        if status < 300:
            self._tasks.spawn(self._forward_response(forwarding, branch, upstream))
            if 200 <= status < 300 and forwarding.request.method == "INVITE":
                self._answered(forwarding, branch)
            elif status >= 200:
                forwarding.answered = True
                if forwarding.request.method == "BYE" and forwarding.dialog is not None:
                    self.dialogs.release(forwarding.dialog.call_id)
            return
        if status >= 600:
            self._cancel_branches(forwarding, except_branch=branch)
        self._maybe_finish(forwarding)

    async def _forward_response(
        self, forwarding: Forwarding, branch: Branch, response: Response
    ) -> None:
        async with forwarding.response_lock:
            await self._rewrite_and_respond(forwarding, branch, response)

    async def _rewrite_and_respond(
        self, forwarding: Forwarding, branch: Branch, response: Response
    ) -> None:
        exchange = forwarding.exchange
        responder = branch.destination.kind
        if exchange is not None and forwarding.dialog is not None and self._media is not None \
                and responder != forwarding.sender_kind:
            try:
                await self._media.response(forwarding.dialog, exchange, response, responder)
            except SipError as error:
                log.warning("media for %s failed: %s", forwarding.request.call_id, error.reason)
                if 200 <= response.status < 300:
                    # The call is up on the far side but we cannot bridge it: say so upstream
                    # rather than sending SDP the caller cannot use.
                    response.set_body(b"")
        forwarding.server.respond(response)

    def _answered(self, forwarding: Forwarding, winner: Branch) -> None:
        forwarding.answered = True
        if forwarding.timer is not None:
            forwarding.timer.cancel()
            forwarding.timer = None
        self._cancel_branches(forwarding, except_branch=winner)
        dialog = forwarding.dialog
        if dialog is not None and forwarding.request.to.tag is None:
            dialog.confirmed = True
            dialog.callee_kind = winner.destination.kind
            if isinstance(winner.destination.target, Flow):
                self.dialogs.attach_flow(dialog, winner.destination.target.id)
            self.dialogs.extend(dialog, INVITE_DIALOG_LIFETIME)
            if dialog.media is not None and dialog.callee_kind == dialog.caller_kind:
                # A branch of the caller's own kind won a mixed fork: no anchor needed.
                self._tasks.spawn(self._release_dialog(dialog))

    def _maybe_finish(self, forwarding: Forwarding) -> None:
        if forwarding.answered or any(b.final is None for b in forwarding.branches):
            return
        best = _best_response([b.final for b in forwarding.branches if b.final is not None])
        forwarding.answered = True
        if forwarding.timer is not None:
            forwarding.timer.cancel()
        upstream = best.copy()
        upstream.remove_first_value("via")
        if upstream.status == 503:
            upstream = forwarding.request.response(500, "Server Internal Error (upstream 503)")
        self._merge_challenges(forwarding, upstream)
        forwarding.server.respond(upstream)
        if forwarding.dialog is not None and not forwarding.dialog.confirmed and \
                forwarding.request.to.tag is None:
            self.dialogs.release(forwarding.dialog.call_id)
        if forwarding.request.method == "BYE" and forwarding.dialog is not None:
            self.dialogs.release(forwarding.dialog.call_id)

    def _answer_trunk_challenge(
        self, forwarding: Forwarding, branch: Branch, challenge: Response
    ) -> bool:
        """A trunk with credentials challenged the gateway: resend with digest (once). The new
        transaction needs a higher CSeq (RFC 3261 §22.2), so the caller's side of the dialog is
        shifted by one toward the trunk from then on (Kamailio's uac_auth does the same)."""
        trunk = branch.destination.trunk
        if trunk is None or not trunk.username or branch.authenticated or forwarding.answered:
            return False
        header = "Proxy-Authenticate" if challenge.status == 407 else "WWW-Authenticate"
        try:
            chosen = select_challenge(challenge.get_all(header))
        except SipError as error:
            log.warning("trunk %s sent an unusable challenge: %s", trunk.name, error.reason)
            return False
        retry = branch.request.copy()
        retry.remove_first_value("via")
        retry.prepend("Via", self._via(branch.destination, self._branch(forwarding.request)))
        cseq = branch.request.cseq
        retry.set("CSeq", f"{cseq.number + 1} {cseq.method}")
        retry.add(
            "Proxy-Authorization" if challenge.status == 407 else "Authorization",
            build_authorization(chosen, method=retry.method, uri=retry.uri,
                                username=trunk.username, password=trunk.password),
        )
        if forwarding.dialog is not None and forwarding.request.to.tag is None:
            forwarding.dialog.extra["trunk_cseq_offset"] = (
                cseq.number + 1 - forwarding.request.cseq.number
            )
        branch.request = retry
        branch.authenticated = True
        branch.provisional = False
        self._start_branch(forwarding, branch)
        return True

    def _merge_challenges(self, forwarding: Forwarding, upstream: Response) -> None:
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

    def _on_stray_response(self, response: Response, flow: Flow) -> None:
        """2xx retransmissions after the client transaction ended: relay statelessly, only when
        our top Via's branch is one we signed for the Via below it (anything else is forged or
        not ours, and would make us a reflector)."""
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

    # --- BYE / dialog end --------------------------------------------------------------------
    async def _release_dialog(self, dialog: Dialog) -> None:
        if self._media is not None:
            await self._media.release(dialog)

    # --- CANCEL (§16.10) ---------------------------------------------------------------------
    def _cancel(self, cancel: Request, server: ServerTransaction) -> None:
        invite_server = self._transactions.find_invite_for_cancel(cancel, server.flow)
        forwarding = self._forwardings.get(invite_server) if invite_server else None
        if forwarding is None:
            self._reply(server, cancel, 481, "Call/Transaction Does Not Exist")
            return
        server.respond(cancel.response(200))
        if forwarding.answered:
            return
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

    def _invite_timeout(self, forwarding: Forwarding) -> None:
        forwarding.timer = None
        if forwarding.answered:
            return
        log.info("INVITE %s: no answer within %.0f s", forwarding.request.call_id,
                 self.policy.invite_timeout)
        self._cancel_branches(forwarding, except_branch=None)
        forwarding.answered = True
        self._reply(
            forwarding.server, forwarding.request, 480, "Temporarily Unavailable (no answer)"
        )
        if forwarding.dialog is not None and not forwarding.dialog.confirmed:
            self.dialogs.release(forwarding.dialog.call_id)

    # --- ACK for 2xx -------------------------------------------------------------------------
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
            out = self._branch_request(ack, destination, None, record_route=False,
                                       cseq_offset=_cseq_offset(dialog, ack))
            if dialog.media is not None and self._media is not None:
                sender, _ = _kinds_in_dialog(dialog, ack)
                await self._media.ack(dialog, out, sender)
            await self._transport.send_request(out, destination.target)
        except SipError as error:
            log.info("ACK %s not relayed: %s", ack.call_id, error.reason)

    # --- media -------------------------------------------------------------------------------
    async def _media_offer(
        self, forwarding: Forwarding, destinations: list[Destination]
    ) -> bytes | None:
        """The rewritten offer for branches of the other media kind (None: none needed, or a
        late offer). In a dialog only an already anchored call is anchored again."""
        dialog = forwarding.dialog
        request = forwarding.request
        if dialog is None or self._media is None or request.method not in ("INVITE", "UPDATE"):
            return None
        if request.to.tag is not None and dialog.media is None:
            return None
        other = next(
            (d.kind for d in destinations if d.kind != forwarding.sender_kind), None
        )
        if other is None:
            return None
        started = await self._media.offer(dialog, request, forwarding.sender_kind, other)
        if started is None:
            return None
        forwarding.exchange, body = started
        return body

    # --- helpers -----------------------------------------------------------------------------
    def _party_of(self, flow: Flow) -> Party:
        """The party that sent a dialog-creating request on `flow`: reached again on that flow
        when it is a connection, at its source address over UDP (an idle UDP flow is
        forgotten; the address stays)."""
        trunk = self._trust.trunk_of(flow)
        host, port = flow.remote
        target: Flow | Target = flow if flow.reliable else Target(flow.transport, host, port)
        return Party(target, trunk.name if trunk is not None else None)

    def _reply(
        self, server: ServerTransaction, request: Request, status: int, reason: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        response = request.response(status, reason, to_tag=request.stable_tag())
        for name, value in headers or ():
            response.add(name, value)
        server.respond(response)


def _ignore_response(response: Response, client: ClientTransaction) -> None:
    """Responses to our own CANCELs need no action: the INVITE's 487 ends the branch."""


def _strip_asserted_identity(request: Request) -> None:
    for name in ASSERTED_IDENTITY_HEADERS:
        if request.has(name):
            request.remove(name)


def _kind(transport: str) -> str:
    return "webrtc" if transport.lower() in WEBRTC_TRANSPORTS else "plain"


def _lifetime(request: Request) -> float:
    if request.method == "INVITE":
        return EARLY_DIALOG_LIFETIME
    return subscription_lifetime(request.expires)


def _domain_aor(aor: str, domain: str) -> str:
    scheme, _, rest = aor.partition(":")
    user, _, _ = rest.partition("@")
    return f"sip:{user}@{domain}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_CLASS_PREFERENCE = {6: 0, 2: 1, 3: 3, 4: 4, 5: 5}


def _best_response(finals: list[Response]) -> Response:
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



def _kinds_in_dialog(dialog: Dialog, request: Request) -> tuple[str, str]:
    """(sender kind, receiver kind) of an in-dialog request, by who sent the dialog's INVITE."""
    if request.from_.tag == dialog.caller_tag:
        return dialog.caller_kind, dialog.callee_kind
    return dialog.callee_kind, dialog.caller_kind


def _cseq_offset(dialog: Dialog, request: Request) -> int:
    """The CSeq shift for the caller's requests toward a trunk that made us authenticate."""
    if request.from_.tag == dialog.caller_tag:
        return int(dialog.extra.get("trunk_cseq_offset", 0))
    return 0
