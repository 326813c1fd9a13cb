"""Where a request goes: this node's own addresses, Record-Route/Via values, and destinations."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Final, Literal

from sip.flow import WILDCARD_HOSTS, Flow, announced_host, format_address
from sip.headers import NameAddr, Via
from sip.message import Request
from sip.resolver import Target
from sip.uri import SipUri

from .config import Trunk, TrustedSource
from .flowtoken import DIALOG, FlowRef, FlowTokens
from .flowtoken import PARAM as FLOW_PARAM

WEBRTC_TRANSPORTS = frozenset(("ws", "wss"))
# The side of the media anchor a party is on: a browser's DTLS-SRTP/ICE ("webrtc") or a phone's
# or PBX's plain RTP ("plain"). The same values as webrtc.Side, which the anchor is handed.
Side = Literal["webrtc", "plain"]
WEBRTC: Final = "webrtc"
PLAIN: Final = "plain"
# Sources seen recently and the trunk they matched (or None): a request from a trunk or a
# phone is matched against the rules once, not each time.
TRUST_CACHE_SIZE = 1024


@dataclass(slots=True)
class Destination:
    """One branch of a forwarded request."""

    ruri: str
    target: Flow | Target
    routes: list[str] = field(default_factory=list)  # Route values pushed above existing ones
    side: Side = PLAIN  # the media side of whoever is reached
    aor: str | None = None  # local user reached
    trunk: Trunk | None = None
    # The device's flow when another node holds it (reached with a hop token to that node).
    node_flow: FlowRef | None = None

    @property
    def transport(self) -> str:
        return self.target.transport.lower()


class TrunkTrust:
    """Which trunk, if any, a flow speaks for: its transport, source address and port against
    each trunk's trusted_sources (first match wins). WebSocket flows are never a trunk."""

    def __init__(self, trunks: tuple[Trunk, ...]) -> None:
        self._rules = [
            (TrustedSource.parse(source), trunk)
            for trunk in trunks for source in trunk.trusted_sources
        ]
        self._match = functools.lru_cache(maxsize=TRUST_CACHE_SIZE)(self._first_match)

    def trunk_of(self, flow: Flow) -> Trunk | None:
        if not self._rules or flow.transport in WEBRTC_TRANSPORTS:
            return None
        host, port = flow.remote
        return self._match(flow.transport, host, port)

    def _first_match(self, transport: str, host: str, port: int) -> Trunk | None:
        for rule, trunk in self._rules:
            if rule.matches(transport, host, port):
                return trunk
        return None


class LocalAddresses:
    """This node's listeners, and the URIs it writes into Via and Record-Route."""

    def __init__(self, domain: str, public_address: str, tokens: FlowTokens, node_id: str) -> None:
        self.domain = domain.lower()
        self.public_address = public_address
        self.node_id = node_id
        self._tokens = tokens
        self._by_transport: dict[str, tuple[str, int]] = {}
        self.hosts: set[str] = {self.domain}
        self.ports: set[int] = set()
        if public_address:
            self.hosts.add(public_address.lower())

    def add_listener(self, transport: str, host: str, port: int) -> None:
        if host in WILDCARD_HOSTS:
            self.hosts.update(("127.0.0.1", "localhost", "::1"))
        host = announced_host(host, self.public_address)
        self._by_transport.setdefault(transport, (host, port))
        self.hosts.add(host.lower())
        self.ports.add(port)

    def address(self, transport: str) -> tuple[str, int] | None:
        return self._by_transport.get(transport)

    def is_local_uri(self, uri: SipUri) -> bool:
        if uri.host.lower() not in self.hosts:
            return False
        if uri.port is None:
            return uri.host.lower() == self.domain or 5060 in self.ports or 5061 in self.ports
        return uri.port in self.ports

    def record_route(self, transport: str, call_id: str, flow: Flow | None = None) -> str:
        """Our Record-Route entry facing a peer on `transport`; toward a flow-bound peer
        (browser, NATed client) it carries a flow token signed for this dialog only."""
        if transport in WEBRTC_TRANSPORTS and flow is not None:
            host, port = self.public_address or flow.local[0], flow.local[1]
        else:
            bound = self.address(transport) or self.address("udp") or ("127.0.0.1", 5060)
            host, port = bound
        uri = f"sip:{format_address((host, port))};transport={transport};lr"
        if flow is not None and flow.reliable:
            token = self._tokens.encode(FlowRef(self.node_id, flow.id), call_id, DIALOG)
            uri += f";{FLOW_PARAM}={token}"
        return f"<{uri}>"

    @staticmethod
    def flow_token(route: NameAddr) -> str | None:
        return route.uri.params.get(FLOW_PARAM)


def loop_hash(request: Request) -> str:
    """The loop-detection part of our branch (RFC 3261 §16.6 step 8, §16.3 step 4): the same
    request arriving again unchanged hashes the same, a spiral (changed Request-URI) does not."""
    material = "\n".join(
        (request.uri, request.from_.tag or "", request.to.tag or "", request.call_id,
         str(request.cseq.number), ",".join(request.get_all("proxy-require")))
    )
    return hashlib.blake2b(material.encode(), digest_size=6).hexdigest()


def upstream_hop(call_id: str, via: Via) -> str:
    """What our branch toward the next hop is signed over: the request's Call-ID and the Via
    its responses return to (sent-by, received, rport, branch), as parsed, so that a peer that
    re-serialises Vias still echoes the same values."""
    params = via.params
    return "\n".join((
        call_id, via.transport.upper(), via.host.lower(), str(via.port),
        params.get("received") or "", params.get("rport") or "", params.get("branch") or "",
    ))


def side_of_sdp(body: bytes, transport: str) -> Side:
    """"webrtc" when the SDP speaks DTLS-SRTP with ICE (or, without SDP, the client came over
    WebSocket); otherwise "plain"."""
    if body:
        return WEBRTC if b"UDP/TLS/RTP/SAVP" in body else PLAIN
    return side_of_transport(transport)


def side_of_transport(transport: str) -> Side:
    return WEBRTC if transport.lower() in WEBRTC_TRANSPORTS else PLAIN
