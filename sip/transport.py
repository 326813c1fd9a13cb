"""The transport layer (RFC 3261 §18, RFC 3581): listeners, the flow table, and the rules for
where requests and responses go.

Every transport, including the gateway's WebSocket flows, hands received bytes to receive();
the transaction layer gets parsed, checked messages through on_message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .errors import SipError
from .flow import Address, Flow, Target, announced_host, format_address
from .framing import PING, PONG
from .headers import COMPACT_FORMS, Via
from .message import DEFAULT_LIMITS, Limits, Message, Request, Response, parse_message
from .stream import StreamFlow
from .tasks import TaskSet
from .udp import UdpEndpoint, UdpFlow

if TYPE_CHECKING:
    from .resolver import Resolver

log: Final = logging.getLogger(f"ws2sip.{__name__}")
# Every SIP message in and out at DEBUG: what an operator reads to follow a call.
wire_log: Final = logging.getLogger("ws2sip.sip.wire")

DEFAULT_PORTS: Final = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_FLOWS: Final = 50_000
# Seconds a client is asked to wait (Retry-After) when a table is full, and between two log
# lines saying so: one per interval, not one per refused packet.
OVERLOAD_RETRY_AFTER: Final = 10
OVERLOAD_LOG_INTERVAL: Final = 60.0
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# Headers a 4xx needs to be matched by the sender (§8.2.6.2), read from a message that did not
# parse as a whole.
_ECHOED_HEADERS: Final = {"via", "from", "to", "call-id", "cseq"}
_COMPACT_TO_KEY: Final = {short: name.lower() for short, name in COMPACT_FORMS.items()}


def _ignore_message(message: Request | Response, flow: Flow) -> None:
    log.debug("no transaction layer: dropping %s from %s", message.start_line(), flow.id)


def _ignore_flow(flow: Flow) -> None:
    pass


def _accept_any(flow: Flow) -> bool:
    return True


class _AcceptingOwner:
    """The owner of the connections a TCP/TLS listener accepts: the layer itself, except that
    a connection its admit_connection refuses is closed before it is ever registered."""

    def __init__(self, layer: TransportLayer) -> None:
        self._layer = layer

    def receive(self, data: bytes, flow: Flow) -> None:
        self._layer.receive(data, flow)

    def register_flow(self, flow: Flow) -> None:
        if self._layer.admit_connection(flow):
            self._layer.register_flow(flow)
        else:
            flow.close()

    def unregister_flow(self, flow: Flow) -> None:
        self._layer.unregister_flow(flow)

    def has_room_for_flow(self) -> bool:
        return self._layer.has_room_for_flow()

    def refuse_over_capacity(self, data: bytes, flow: Flow) -> None:
        self._layer.refuse_over_capacity(data, flow)


class TransportLayer:
    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        resolver: Resolver | None = None,
        idle_timeout: float = 3600.0,
        max_flows: int = DEFAULT_MAX_FLOWS,
    ) -> None:
        self.limits = limits
        self.resolver = resolver
        self.idle_timeout = idle_timeout
        # UDP peers, TCP/TLS connections and WebSockets together; past it new peers get 503.
        self.max_flows = max_flows
        self._refusal_logged_at = -OVERLOAD_LOG_INTERVAL
        self.on_message: Callable[[Request | Response, Flow], None] = _ignore_message
        self.on_flow_closed: Callable[[Flow], None] = _ignore_flow
        # Asked about each connection a TCP/TLS listener accepts (not those we open): False
        # closes it at once, e.g. over a per-source-address cap.
        self.admit_connection: Callable[[Flow], bool] = _accept_any
        self._udp: list[UdpEndpoint] = []
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._listening: dict[str, list[Address]] = {}
        self._flows: dict[str, Flow] = {}
        self._connections: dict[tuple[str, str, int], Flow] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[Flow]] = {}
        self._sent_by: set[tuple[str, int]] = set()
        self._wildcard_ports: set[int] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._tasks = TaskSet(log, "sending a response on a new connection")

    # --- listeners ---------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int) -> Address:
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(self), local_addr=(host, port)
        )
        self._udp.append(endpoint)
        return self._listened("udp", endpoint.local)

    async def listen_tcp(self, host: str, port: int) -> Address:
        return await self._listen_stream("tcp", host, port, None)

    async def listen_tls(self, host: str, port: int, ssl_context: ssl.SSLContext) -> Address:
        return await self._listen_stream("tls", host, port, ssl_context)

    async def _listen_stream(
        self, transport: str, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> Address:
        loop = asyncio.get_running_loop()
        accepting = _AcceptingOwner(self)
        server = await loop.create_server(
            lambda: StreamFlow(accepting, transport, self.limits), host, port, ssl=ssl_context
        )
        self._servers.append((transport, server))
        # getattr: typeshed declares a tuple, uvloop returns a list, and compiled code (mypyc)
        # would check an attribute read against the declared type.
        sockets = getattr(server, "sockets")  # noqa: B009
        sockname = sockets[0].getsockname()
        return self._listened(transport, (sockname[0], sockname[1]))

    def _listened(self, transport: str, bound: Address) -> Address:
        self._listening.setdefault(transport, []).append(bound)
        self.add_sent_by(*bound)
        if bound[0] in _WILDCARD_HOSTS:
            self._wildcard_ports.add(bound[1])
        self._start_sweeper()
        return bound

    def listening(self, transport: str) -> Address | None:
        addresses = self._listening.get(transport.lower())
        return addresses[0] if addresses else None

    def add_sent_by(self, host: str, port: int) -> None:
        """Declare a host:port that our Via headers use (public name, WebSocket listener…), so
        responses carrying it pass the §18.1.2 check."""
        self._sent_by.add((host.lower(), port))

    def via_value(self, transport: str, branch: str, *, rport: bool = True) -> str:
        """A Via header value naming our listener of that transport as sent-by."""
        bound = self.listening(transport)
        if bound is None:
            raise SipError(503, f"No {transport} listener for a Via")
        sent_by = format_address((announced_host(bound[0]), bound[1]))
        return f"SIP/2.0/{transport.upper()} {sent_by};branch={branch}{';rport' if rport else ''}"

    # --- flow table --------------------------------------------------------------------------
    def register_flow(self, flow: Flow) -> None:
        self._flows[flow.id] = flow
        if flow.reliable:
            self._connections[(flow.transport, flow.remote[0], flow.remote[1])] = flow

    def unregister_flow(self, flow: Flow) -> None:
        if self._flows.pop(flow.id, None) is None:
            return
        key = (flow.transport, flow.remote[0], flow.remote[1])
        if self._connections.get(key) is flow:
            del self._connections[key]
        try:
            self.on_flow_closed(flow)
        except Exception:
            log.exception("on_flow_closed failed for %s", flow.id)

    def has_room_for_flow(self) -> bool:
        return len(self._flows) < self.max_flows

    def refuse_over_capacity(self, data: bytes, flow: Flow) -> None:
        """A message from a peer the full flow table has no room for (a flow never registered):
        a request gets 503 with Retry-After, straight back; anything else is dropped."""
        self.log_overload(f"flow table full ({self.max_flows} flows)")
        error = SipError(503, "Service Unavailable (too many peers)",
                         headers=[("Retry-After", str(OVERLOAD_RETRY_AFTER))])
        response = _error_response(data, error)
        if response is not None:
            _emit(flow, response)

    def log_overload(self, what: str) -> None:
        """One warning per OVERLOAD_LOG_INTERVAL for a full table, however many are refused."""
        now = time.monotonic()
        if now - self._refusal_logged_at >= OVERLOAD_LOG_INTERVAL:
            self._refusal_logged_at = now
            log.warning("%s: refusing new peers and requests with 503 (logged once a minute)",
                        what)

    def flow_by_id(self, flow_id: str) -> Flow | None:
        return self._flows.get(flow_id)

    def connection(self, transport: str, host: str, port: int) -> Flow | None:
        """The open reliable flow (TCP, TLS, WebSocket) to that peer address, if any."""
        flow = self._connections.get((transport, host, port))
        return flow if flow is not None and not flow.closed else None

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def flow_counts(self) -> dict[str, int]:
        """Open flows by transport (udp, tcp, tls, ws, wss), for an operator's status view."""
        counts: dict[str, int] = {}
        for flow in self._flows.values():
            counts[flow.transport] = counts.get(flow.transport, 0) + 1
        return counts

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            interval = min(self.idle_timeout / 4, 60.0)
            self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self.idle_timeout
        for flow in [flow for flow in self._flows.values() if flow.last_activity < deadline]:
            log.info("%s: idle for %.0f s, closing", flow.id, self.idle_timeout)
            flow.close()
        self._start_sweeper()

    # --- receiving ---------------------------------------------------------------------------
    def receive(self, data: bytes, flow: Flow) -> None:
        """Parse, check (§18.1.2, §18.2.1) and pass up one message; never raises."""
        flow.touch()
        if not data.strip(b"\r\n"):
            # RFC 5626 §4.4.1 double-CRLF keep-alive (WebSocket frames; streams frame it earlier).
            if data == PING and flow.reliable:
                flow.send(PONG)
            return
        if flow.transport == "udp" and data[0] < 0x20:
            return  # STUN keep-alive (RFC 5626 §4.4.2) or binary noise: not SIP
        try:
            message = parse_message(data, self.limits)
            message.validate()
        except SipError as error:
            self._reject(data, error, flow)
            return
        except Exception:
            # The parser must only raise SipError; anything else is a bug, but one bad packet
            # must not take the transport down with it.
            log.exception("%s: parser failure on %r", flow.id, data[:200])
            return
        if wire_log.isEnabledFor(logging.DEBUG):
            wire_log.debug("%s <- %s %s:%d\n%s", flow.id, flow.transport, *flow.remote,
                           data.decode("utf-8", "replace"))
        if isinstance(message, Request):
            try:
                self._stamp_received(message, flow)
            except SipError as error:
                self._reject(data, error, flow)
                return
        elif not self._is_our_sent_by(message.top_via):
            log.info("%s: dropping response %d: top Via %s is not ours (§18.1.2)",
                     flow.id, message.status, message.top_via.sent_by)
            return
        try:
            self.on_message(message, flow)
        except Exception:
            log.exception("%s: handler failed on %s", flow.id, message.start_line())

    def _stamp_received(self, request: Request, flow: Flow) -> None:
        """§18.2.1 received= and RFC 3581 rport=, so the response finds its way back."""
        via = request.top_via
        source_host, source_port = flow.remote
        wants_rport = "rport" in via.params
        if not wants_rport and via.host == source_host:
            return
        via.params["received"] = source_host
        if wants_rport:
            via.params["rport"] = str(source_port)
        request.replace_top_via(via)

    def _is_our_sent_by(self, via: Via) -> bool:
        port = via.port or DEFAULT_PORTS.get(via.transport.lower(), 5060)
        if port in self._wildcard_ports:
            return True
        return (via.host.lower(), port) in self._sent_by

    def _reject(self, data: bytes, error: SipError, flow: Flow) -> None:
        response = _error_response(data, error)
        if response is None:
            log.info("%s: dropping unparseable message (%s): %r", flow.id, error, data[:80])
            return
        log.info("%s: answering malformed request with %d %s", flow.id, error.status, error.reason)
        # Straight back to the source: the Via was not stamped, and RFC 3581 would say the same.
        _emit(flow, response)

    # --- sending -----------------------------------------------------------------------------
    async def send_request(self, request: Request, target: Target | Flow) -> Flow:
        flow = self.send_request_if_connected(request, target)
        if flow is not None:
            return flow
        assert not isinstance(target, Flow)
        flow = await self._connect(target.transport.lower(), target.host, target.port)
        _emit(flow, request)
        return flow

    def send_request_if_connected(self, request: Request, target: Target | Flow) -> Flow | None:
        """Send without waiting when no connection must be opened (the common case: a Flow, UDP,
        or a reused TCP/TLS connection); None means send_request() must connect first."""
        if isinstance(target, Flow):
            if target.closed:
                raise SipError(503, f"Flow {target.id} is closed")
            _emit(target, request)
            return target
        transport = target.transport.lower()
        if transport == "udp":
            flow = self._udp_endpoint(target.host).flow_to((target.host, target.port))
            _emit(flow, request)
            return flow
        if transport not in ("tcp", "tls"):
            raise SipError(503, f"Cannot open a {transport} connection to {target.host}")
        connection = self._connections.get((transport, target.host, target.port))
        if connection is None or connection.closed:
            return None
        _emit(connection, request)
        return connection

    def _udp_endpoint(self, host: str) -> UdpEndpoint:
        if not self._udp:
            raise SipError(503, "No UDP listener to send from")
        want_v6 = ":" in host
        for endpoint in self._udp:
            if (":" in endpoint.local[0]) == want_v6:
                return endpoint
        return self._udp[0]

    async def _connect(self, transport: str, host: str, port: int) -> Flow:
        key = (transport, host, port)
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        existing = self._connections.get(key)
        if existing is not None and not existing.closed:
            return existing
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Flow] = loop.create_future()
        self._connecting[key] = future
        try:
            ssl_context = self._client_ssl_context() if transport == "tls" else None
            _, flow = await asyncio.wait_for(
                loop.create_connection(
                    lambda: StreamFlow(self, transport, self.limits), host, port, ssl=ssl_context
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            failure = SipError(503, f"Cannot connect over {transport} to "
                                    f"{format_address((host, port))}: {error or 'timeout'}")
            future.set_exception(failure)
            future.exception()  # mark retrieved: concurrent waiters may not exist
            raise failure from error
        finally:
            del self._connecting[key]
        future.set_result(flow)
        return flow

    def set_client_ssl_context(self, context: ssl.SSLContext) -> None:
        """TLS context for outgoing connections (defaults to the system trust store)."""
        self._client_ssl = context

    def _client_ssl_context(self) -> ssl.SSLContext:
        if self._client_ssl is None:
            self._client_ssl = ssl.create_default_context()
        return self._client_ssl

    def send_response(self, response: Response, flow: Flow | None) -> None:
        """§18.2.2 with RFC 3581: reliable → the request's flow (or a new connection to
        received/rport), UDP → received/rport from our listening socket; a request that came
        over UDP whatever its Via says is answered over UDP to its source."""
        if flow is not None and flow.reliable and not flow.closed:
            _emit(flow, response)
            return
        via = response.top_via
        transport = via.transport.lower()
        if isinstance(flow, UdpFlow) and transport != "udp":
            # Arrived over UDP with a TCP/TLS Via (RFC 4475 bext01, a NATed or broken client):
            # a new connection to the Via host would never reach it. Back to the source over
            # UDP, as Kamailio does.
            _emit(flow, response)
            return
        destination = _response_destination(via)
        if transport == "udp":
            if isinstance(flow, UdpFlow):
                flow.send_from_same_socket(response.to_bytes(), destination)
            else:
                data = response.to_bytes()
                if wire_log.isEnabledFor(logging.DEBUG):
                    wire_log.debug("udp -> %s:%d\n%s", *destination,
                                   data.decode("utf-8", "replace"))
                self._udp_endpoint(destination[0]).send_to(data, destination)
            return
        if transport not in ("tcp", "tls"):
            log.info("flow %s gone: cannot reach %s %s for %d response",
                     flow.id if flow else "-", transport, via.sent_by, response.status)
            return
        self._tasks.spawn(self._send_response_on_new_connection(response, transport, destination))

    async def _send_response_on_new_connection(
        self, response: Response, transport: str, destination: Address
    ) -> None:
        host, port = destination
        try:
            if not _is_ip(host) and self.resolver is not None:
                targets = await self.resolver.resolve(host, port=port, transport=transport)
                if targets:
                    host, port = targets[0].host, targets[0].port
            flow = await self._connect(transport, host, port)
        except SipError as error:
            log.info("cannot deliver %d response: %s", response.status, error)
            return
        _emit(flow, response)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._tasks.cancel_all()
        for _, server in self._servers:
            server.close()
        for flow in list(self._flows.values()):
            flow.close()
        for endpoint in self._udp:
            endpoint.close()
        for _, server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._udp.clear()
        self._listening.clear()
        # Let connection_lost callbacks run so on_flow_closed sees every flow go.
        await asyncio.sleep(0)


def _response_destination(via: Via) -> Address:
    """UDP: received + rport (RFC 3581). A new TCP/TLS connection goes to received + the sent-by
    port: rport there is the dead connection's ephemeral port, which nobody listens on."""
    host = via.params.get("received") or via.host
    transport = via.transport.lower()
    rport = via.params.get("rport")
    if transport == "udp" and rport and rport.isdigit():
        return host, int(rport)
    return host, via.port or DEFAULT_PORTS.get(transport, 5060)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _error_response(data: bytes, error: SipError) -> Response | None:
    """The error response for a request that failed to parse or validate, built from its raw
    Via/From/To/Call-ID/CSeq lines; None for responses, ACKs, or when those headers are missing."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0].split(" ")
    if not start[0] or start[0].startswith("SIP/") or start[0].upper() == "ACK":
        return None
    response = Response(error.status, error.reason)
    found: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        key = _COMPACT_TO_KEY.get(key, key)
        if colon and key in _ECHOED_HEADERS:
            response.add(name.strip(), value.strip())
            found.add(key)
    if found != _ECHOED_HEADERS:
        return None
    for name, value in error.headers:
        response.add(name, value)
    return response


def _emit(flow: Flow, message: Message) -> None:
    data = message.to_bytes()
    if wire_log.isEnabledFor(logging.DEBUG):
        wire_log.debug("%s -> %s %s:%d\n%s", flow.id, flow.transport, *flow.remote,
                       data.decode("utf-8", "replace"))
    flow.send(data)
