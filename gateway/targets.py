"""Whom a new request goes to: a local user's registered devices, the one device a GRUU names, a
trunk by dialled number, or another node of the cluster that holds the device's connection;
and whether the call limits allow it. Relaying anywhere else is refused."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from sip.errors import SipError
from sip.flow import parse_address
from sip.message import Request
from sip.resolver import Target
from sip.transport import TransportLayer
from sip.uri import SipUri

from .config import Trunk
from .dialogs import DialogTable
from .flowtoken import HOP, FlowRef, FlowTokens
from .flowtoken import PARAM as FLOW_PARAM
from .gruu import Gruus, GruuTarget
from .location import Binding, LocationService
from .routing import PLAIN, Destination, LocalAddresses, Side, side_of_transport

log = logging.getLogger(f"ws2sip.{__name__}")


class Targets:
    def __init__(
        self, *, domain: str, node_id: str, max_calls_per_user: int, trunks: tuple[Trunk, ...],
        location: LocationService, transport: TransportLayer, addresses: LocalAddresses,
        gruus: Gruus, tokens: FlowTokens, dialogs: DialogTable,
        user_exists: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._domain = domain.lower()
        self._node_id = node_id
        self._max_calls_per_user = max_calls_per_user
        self._location = location
        self._transport = transport
        self._addresses = addresses
        self._gruus = gruus
        self._tokens = tokens
        self._dialogs = dialogs
        self._user_exists = user_exists
        self._trunk_matchers = [(re.compile(trunk.match), trunk) for trunk in trunks if trunk.match]

    async def select(
        self, request: Request, from_trunk: Trunk | None
    ) -> tuple[list[Destination], str | None]:
        """The destinations of a new request and the local callee's AoR (None for a trunk).
        Raises SipError when nobody can be reached, or the request may not go there."""
        destinations, callee_aor, _ = await self.route(request, from_trunk, wakes=False)
        return destinations, callee_aor

    async def route(
        self, request: Request, from_trunk: Trunk | None, *, wakes: bool
    ) -> tuple[list[Destination], str | None, list[Binding]]:
        """select(), and when `wakes` (the request may wait for a push, RFC 8599) the callee's
        sleeping push bindings: a callee with only those is not unreachable."""
        ruri = request.ruri
        if self.is_local_domain(ruri):
            gruu = self._gruus.resolve(ruri)
            if gruu is not None:
                # Only the named instance, never its AoR's other devices nor a trunk (§8.4.1).
                return await self.gruu_destinations(ruri, gruu, request.call_id), gruu.aor, []
            callee_aor = ruri.address_of_record
            sleeping: list[Binding] = []
            destinations = await self._destinations(
                await self._location.lookup(_domain_aor(callee_aor, self._domain)),
                request.call_id, sleeping if wakes else None,
            )
            if not destinations and not sleeping and from_trunk is None:
                destinations = self._trunk_destinations(ruri)
            if not destinations and not sleeping:
                raise SipError(*await self._why_unreachable(ruri))
            return destinations, callee_aor, sleeping
        if from_trunk is not None:
            raise SipError(403, "Trunks may only reach local users")
        destinations = self._trunk_destinations(ruri)
        if not destinations:
            raise SipError(403, f"Relaying to {ruri.host} is not allowed")
        return destinations, None, []

    def check_limits(
        self, request: Request, caller: str | None, callee: str | None, trunk: Trunk | None
    ) -> None:
        if request.method != "INVITE":
            return
        limit = self._max_calls_per_user
        if limit and caller and self._dialogs.calls_of_user(caller) >= limit:
            raise SipError(503, f"Call limit of {limit} reached for {caller}")
        if limit and callee and self._dialogs.calls_of_user(callee) >= limit:
            raise SipError(486, "Busy Here (call limit reached)")
        if trunk and trunk.max_calls and \
                self._dialogs.calls_of_trunk(trunk.name) >= trunk.max_calls:
            raise SipError(503, f"Trunk {trunk.name} call limit reached")

    def is_local_domain(self, uri: SipUri) -> bool:
        return uri.host.lower() == self._domain or self._addresses.is_local_uri(uri)

    def resolve_gruu(self, uri: SipUri) -> GruuTarget | None:
        return self._gruus.resolve(uri) if self.is_local_domain(uri) else None

    async def gruu_destinations(
        self, ruri: SipUri, gruu: GruuTarget, call_id: str
    ) -> list[Destination]:
        """The bindings of the GRUU's instance; 480 when it has none (§8.4.1), 404 for a
        temporary GRUU whose instance registered again with a new Call-ID (§5.3)."""
        bindings = await self._location.lookup(_domain_aor(gruu.aor, self._domain))
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

    async def _destinations(
        self, bindings: list[Binding], call_id: str, sleeping: list[Binding] | None = None
    ) -> list[Destination]:
        """A branch per binding; a binding that cannot be reached is logged and left out.
        Push bindings without a live flow go to `sleeping` instead (left out without it)."""
        destinations: list[Destination] = []
        for binding in bindings:
            if binding.pushable and self.is_asleep(binding):
                if sleeping is not None:
                    sleeping.append(binding)
                continue
            try:
                destinations.append(await self.binding_destination(binding, call_id))
            except SipError as error:
                log.info("binding %s of %s unusable: %s", binding.contact, binding.aor,
                         error.reason)
        return destinations

    def is_asleep(self, binding: Binding) -> bool:
        """No live flow reaches the binding: its flow closed (the location says so), or it was
        on this node and is gone, not yet recorded. UDP has no flow to lose."""
        if binding.asleep:
            return True
        if binding.transport == "udp" or binding.node_id != self._node_id:
            return False
        flow = self._transport.flow_by_id(binding.connection_id)
        return flow is None or flow.closed

    async def binding_destination(self, binding: Binding, call_id: str) -> Destination:
        side = side_of_transport(binding.transport)
        if binding.transport == "udp":
            # Connectionless: any node reaches the client at the address it registered from.
            host, port = parse_address(binding.received)
            destination = Destination(binding.contact, Target("udp", host, port), side=side)
        elif binding.node_id != self._node_id:
            destination = await self._via_node(
                binding.contact, FlowRef(binding.node_id, binding.connection_id), side, call_id
            )
        else:
            flow = self._transport.flow_by_id(binding.connection_id)
            if flow is not None and not flow.closed:
                destination = Destination(binding.contact, flow, side=side)
            else:
                target = await self.resolve(SipUri.parse(binding.contact))
                destination = Destination(binding.contact, target, side=side)
        if binding.path:
            destination.routes = list(binding.path) + destination.routes
        destination.aor = binding.aor
        return destination

    async def _via_node(
        self, ruri: str, flow_ref: FlowRef, side: Side, call_id: str
    ) -> Destination:
        nodes = await self._location.live_nodes()
        node = nodes.get(flow_ref.node_id)
        if node is None or not node.sip_address:
            raise SipError(480, f"Node {flow_ref.node_id} holding the flow is gone")
        uri = SipUri.parse(f"sip:{node.sip_address}")
        target = await self.resolve(uri)
        # The hop token is what makes the other node deliver without a challenge of its own.
        token = self._tokens.encode(flow_ref, call_id, HOP)
        route = f"<sip:{node.sip_address};lr;{FLOW_PARAM}={token}>"
        return Destination(ruri, target, routes=[route], side=side)

    def _trunk_destinations(self, ruri: SipUri) -> list[Destination]:
        number = ruri.user_decoded or ""
        for matcher, trunk in self._trunk_matchers:
            if matcher.fullmatch(number):
                dialled = number.removeprefix(trunk.strip_prefix)
                host, port = parse_address(trunk.address)
                uri = f"sip:{dialled}@{trunk.address}"
                if trunk.transport != "udp":
                    uri += f";transport={trunk.transport}"
                target = Target(trunk.transport, host, port)
                return [Destination(uri, target, side=PLAIN, trunk=trunk)]
        return []

    async def _why_unreachable(self, ruri: SipUri) -> tuple[int, str]:
        user = ruri.user_decoded or ""
        if await self._user_exists(user):
            return 480, "Temporarily Unavailable (not registered)"
        return 404, "Not Found"

    async def resolve(self, uri: SipUri) -> Target:
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


def _domain_aor(aor: str, domain: str) -> str:
    scheme, _, rest = aor.partition(":")
    user, _, _ = rest.partition("@")
    return f"sip:{user}@{domain}"
