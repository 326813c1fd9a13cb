"""ICE on the WebRTC leg: an aioice Connection bound inside the relay's port range.

aioice does the checks, prflx learning, role conflicts and consent freshness. It is subclassed
for three reasons: its sockets must come from the gateway's port range on the configured
host (aioice would bind every interface on a random port), datagrams must reach the relay
synchronously (its queue + coroutine per packet costs too much per packet, see
webrtc.ice_media), and connect() must wait for a first remote candidate or check (aioice
fails at once on an empty check list, which is the normal state while a browser's only
candidate is an unresolvable mDNS name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

import aioice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import CandidatePair, StunProtocol, server_reflexive_candidate
from aioice.mdns import is_mdns_hostname

from .datagram import DatagramSocket
from .ice_media import COMPONENT, MediaFirstProtocol, NominatedRoute
from .ice_tcp import MAX_CONNECTIONS_PER_ICE, IceTcpListener, IceTcpStream, tcp_candidate_priority
from .ports import PortPool

log = logging.getLogger(f"ws2sip.{__name__}")

PEER_WAIT_SECONDS = 30.0


class _NominationWatch(dict[int, CandidatePair]):
    """aioice's dictionary of nominated pairs, telling who sends on them (the C relay path,
    webrtc.relay_pumps) when a pair is nominated or dropped: aioice has no event for it."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__()
        self._on_change = on_change

    def __setitem__(self, component: int, pair: CandidatePair) -> None:
        super().__setitem__(component, pair)
        self._on_change()

    def __delitem__(self, component: int) -> None:
        super().__delitem__(component)
        self._on_change()

    def clear(self) -> None:
        super().clear()
        self._on_change()


class IceConnection(aioice.Connection):
    def __init__(
        self, *, pool: PortPool, public_host: str, ice_controlling: bool,
        on_datagram: Callable[[bytes], None], stun_server: tuple[str, int] | None = None,
        on_nomination: Callable[[], None] | None = None,
        tcp_listener: IceTcpListener | None = None,
    ) -> None:
        super().__init__(
            ice_controlling=ice_controlling, components=1, stun_server=stun_server,
            local_username=tcp_listener.new_ufrag() if tcp_listener is not None else None,
        )
        if on_nomination is not None:
            self._nominated = _NominationWatch(on_nomination)
        self._pool = pool
        self._public_host = public_host
        self._on_datagram = on_datagram
        self._peer_seen = asyncio.Event()
        self._bound_port: int | None = None
        self._candidate_tasks: set[asyncio.Task[None]] = set()
        self._tcp_listener = tcp_listener
        self._tcp_candidate: Candidate | None = None
        self.media_route = NominatedRoute(self._nominated)

    @property
    def bound_port(self) -> int | None:
        return self._bound_port

    @property
    def connected(self) -> bool:
        return COMPONENT in self._nominated

    @property
    def nominated_pair(self) -> CandidatePair | None:
        return self._nominated.get(COMPONENT)

    @property
    def sockets(self) -> list[DatagramSocket]:
        """The relay's sockets this connection reads (one: BUNDLE, rtcp-mux, host candidate)."""
        sockets = []
        for protocol in self._protocols:
            transport = getattr(protocol, "transport", None)
            if isinstance(transport, DatagramSocket):
                sockets.append(transport)
        return sockets

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        # A weak receiver: this connection's check list holds the protocol, so a strong one
        # would be a reference cycle that outlives the call until a full collection.
        protocol = MediaFirstProtocol(weakref.proxy(self), self._on_datagram)
        transport = self._pool.bind_single(lambda: protocol)
        self._bound_port = transport.get_extra_info("sockname")[1]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", self._public_host),
            component=component, transport="udp",
            priority=candidate_priority(component, "host"),
            host=self._public_host, port=self._bound_port, type="host",
        )
        self._protocols.append(protocol)
        candidates = [protocol.local_candidate]
        if self._tcp_listener is not None:
            # RFC 6544 passive candidate: the browser connects, the listener hands the
            # connection over (accept_tcp) once its first check names this local ufrag.
            self._tcp_candidate = Candidate(
                foundation=candidate_foundation("host", "tcp", self._public_host),
                component=component, transport="tcp", priority=tcp_candidate_priority(component),
                host=self._public_host, port=self._tcp_listener.advertised_port, type="host",
                tcptype="passive",
            )
            self._tcp_listener.register(self.local_username, self)
            candidates.append(self._tcp_candidate)
        if self.stun_server:
            with contextlib.suppress(Exception):  # no STUN answer just means no srflx
                srflx, _ = await asyncio.wait_for(
                    server_reflexive_candidate(protocol, self.stun_server), timeout
                )
                candidates.append(srflx)
        return candidates

    def accept_tcp(self, stream: IceTcpStream) -> MediaFirstProtocol | None:
        """An authenticated ICE-TCP connection (webrtc.ice_tcp) becomes one more of this
        connection's sockets: aioice answers and runs checks on it like on the UDP one."""
        open_streams = sum(1 for p in self._protocols
                           if p.local_candidate is self._tcp_candidate
                           and not p.transport.is_closing())
        if (self._tcp_candidate is None or self._closing
                or open_streams >= MAX_CONNECTIONS_PER_ICE):
            return None
        protocol = MediaFirstProtocol(weakref.proxy(self), self._on_datagram)
        protocol.local_candidate = self._tcp_candidate
        protocol.connection_made(stream)  # type: ignore[arg-type]  # the part aioice uses
        self._protocols.append(protocol)
        return protocol

    def data_received(self, data: bytes, component: int) -> None:
        self._on_datagram(data)

    def request_received(
        self, message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        super().request_received(message, addr, protocol)
        self._peer_seen.set()

    def add_sdp_candidates(self, candidates: list[dict[str, Any]]) -> None:
        """Add a remote SDP's UDP candidates.

        Browsers hide host addresses behind mDNS `*.local` names. Those resolve only on the
        browser's own link, which a gateway is not on, and resolving would multicast on
        every interface; the browser's connectivity checks reveal its address instead
        (peer-reflexive learning), so such candidates are skipped.
        """
        for entry in candidates:
            if str(entry.get("protocol", "udp")).lower() != "udp":
                continue  # TCP: the gateway is passive only, browsers' checks reveal them
            if is_mdns_hostname(str(entry["ip"])):
                continue
            candidate = Candidate(
                foundation=str(entry["foundation"]), component=int(entry["component"]),
                transport="udp", priority=int(entry["priority"]), host=str(entry["ip"]),
                port=int(entry["port"]), type=str(entry["type"]),
                related_address=entry.get("raddr"), related_port=entry.get("rport"),
            )
            if candidate.component != COMPONENT:
                continue
            task = asyncio.create_task(self._add_candidate(candidate))
            self._candidate_tasks.add(task)
            task.add_done_callback(self._candidate_tasks.discard)

    async def _add_candidate(self, candidate: Candidate) -> None:
        try:
            await self.add_remote_candidate(candidate)
        except (OSError, ValueError) as exc:
            log.info("remote candidate %s unusable: %s", candidate, exc)
            return
        if self.remote_candidates:
            self._peer_seen.set()

    async def connect_when_peer_known(self) -> None:
        """connect() once a remote candidate resolved or a check arrived (prflx learning)."""
        await asyncio.wait_for(self._peer_seen.wait(), PEER_WAIT_SECONDS)
        await self.connect()

    async def close(self) -> None:
        for task in list(self._candidate_tasks):
            task.cancel()
        if self._tcp_listener is not None:
            self._tcp_listener.unregister(self.local_username)
        await super().close()
        # aioice's close cancels the connectivity checks but keeps each pair's task, which holds
        # its CancelledError, whose traceback holds the check's frame and so this connection and
        # the whole call: a reference cycle that only the gateway's rare full collections would
        # free (gateway/app.py). Dropping the tasks lets reference counting free the call now.
        for pair in self._check_list:
            pair.task = None
        if self._bound_port is not None:
            self._pool.forget(self._bound_port)


def sdp_candidate(candidate: Candidate) -> dict[str, Any]:
    """An aioice candidate as sdp_transform's candidate dictionary."""
    entry: dict[str, Any] = {
        "foundation": candidate.foundation, "component": candidate.component,
        "protocol": candidate.transport, "priority": candidate.priority,
        "ip": candidate.host, "port": candidate.port, "type": candidate.type,
    }
    if candidate.related_address is not None:
        entry["raddr"] = candidate.related_address
        entry["rport"] = candidate.related_port
    if candidate.tcptype is not None:
        entry["tcptype"] = candidate.tcptype
    return entry
