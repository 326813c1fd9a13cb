"""The gateway node: wires listeners, transactions, registrar, proxy and the HTTP/WebSocket edge."""

from __future__ import annotations

import gc
import logging
import secrets
import socket
import ssl
import time
from typing import Any

from aiohttp import web

from sip.flow import WILDCARD_HOSTS, Flow, announced_host, format_address
from sip.message import Limits
from sip.resolver import Resolver
from sip.tasks import TaskSet
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer
from webrtc import MediaRelay, MediaWorkers

from . import compiled
from .admin import STATUS_PATH, status_handler
from .auth import Authenticator
from .call_events import CallEvents, EventSettings
from .config import Config, parse_hostport
from .dispatch import RequestCounts, RequestDispatch
from .drain_client import DRAIN_PATH
from .edge_guard import EdgeGuard, GuardPolicy, open_ban_list
from .lifecycle import NodeDrain, is_loopback
from .location import LocationService, NodeHeartbeat, NodeInfo, open_location_service
from .media import MediaAnchor
from .metrics import GatewayMetrics
from .proxy import ProxyPolicy
from .push.service import PushService
from .push.wakeup import PushWaker, WakePolicy, Wakeups
from .redis_connect import parse_redis_url
from .registrar import RegistrarPolicy
from .trunk_registration import TrunkRegistration
from .users import UserStore, generate_password, open_user_store
from .web import RefusedRequestLog, SettingsAuthenticator, WebPhoneSite
from .websocket import WebSocketPolicy, make_handler
from .wiring import wire_signalling

log = logging.getLogger(f"ws2sip.{__name__}")

DEMO_USERS = ("alice", "bob")
GC_YOUNG_THRESHOLD = 50_000
# A node whose heartbeat is this many intervals late is dead: its bindings are dropped.
NODE_HEARTBEATS_MISSED = 3
# Settings `ws2sip status` shows as the node's limits (0: off).
STATUS_LIMITS = ("max_flows", "max_transactions", "max_dialogs", "max_media_sessions",
                 "max_calls_per_user", "max_contacts", "max_connections_per_ip",
                 "max_requests_per_ip")


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = config.effective_node_id
        self.transport = TransportLayer(
            limits=Limits(max_message_size=config.max_message_size), resolver=Resolver(),
            idle_timeout=config.ws_idle_timeout, max_flows=config.max_flows,
        )
        # A challenge is sent statelessly before any 100 (gateway.proxy): one response for an
        # unauthenticated INVITE, never an amplifier toward a spoofed source.
        self.transactions = TransactionLayer(self.transport, trying_after_tu=True,
                                             max_transactions=config.max_transactions)
        self.location: LocationService = open_location_service(
            config.redis or None, replica_acks=config.redis_replica_acks)
        self.users: UserStore = open_user_store(config.redis or None, config.users_path)
        secret = config.auth_secret.encode() if config.auth_secret else secrets.token_bytes(32)
        self.auth = Authenticator(
            self.users, config.domain.lower(), secret, config.nonce_lifetime,
            config.digest_algorithms,
        )
        self.guard = EdgeGuard(GuardPolicy.from_config(config), open_ban_list(config.redis),
                               self.transport.send_response)
        self.auth.on_verified = self.guard.authenticated
        self.auth.on_failed = self.guard.authentication_failed
        self._settings_auth = SettingsAuthenticator(
            self.users, config.domain.lower(), secret, config.nonce_lifetime,
            self.guard.failed_from, self.guard.is_banned,
        ) if config.turn_uris else None
        # RFC 8599 push: the providers [push] turns on; without any, push parameters are
        # ignored and flows' bindings go with them, as before.
        self.push = PushService(config.push, self.location)
        self.wakeups = Wakeups(self.node_id, config.redis or None) if self.push.names else None
        relay = self._media_relay(config)
        self._media_workers = relay if isinstance(relay, MediaWorkers) else None
        self._local_relay = relay if isinstance(relay, MediaRelay) else None
        self.media = MediaAnchor(relay, config.max_media_sessions)
        self.signalling = wire_signalling(
            proxy_policy=ProxyPolicy.from_config(config, self.node_id),
            registrar_policy=RegistrarPolicy(
                domain=config.domain, node_id=self.node_id, min_expires=config.min_expires,
                max_expires=config.max_expires, default_expires=config.default_expires,
                flow_timer=config.flow_timer, max_contacts=config.max_contacts,
                push_providers=self.push.names, vapid_public_key=self.push.vapid_public_key,
            ),
            transactions=self.transactions, transport=self.transport, location=self.location,
            auth=self.auth, secret=secret, media=self.media, max_dialogs=config.max_dialogs,
        )
        self.proxy = self.signalling.proxy
        self.call_events = CallEvents(EventSettings(
            node=self.node_id, webhook=config.events_webhook, stream=config.events_stream,
            stream_maxlen=config.events_stream_maxlen, redis_url=config.redis,
        ))
        if self.call_events.enabled:
            self.signalling.dialogs.on_call_event = self.call_events.observe
        self._started_at = time.monotonic()
        self.registrar = self.signalling.registrar
        if self.wakeups is not None:
            self.registrar.on_push_registered = self.wakeups.registered
            self.proxy.waker = PushWaker(
                wakeups=self.wakeups, location=self.location, send=self.push.send,
                policy=WakePolicy(wait=config.push.wait, repeat=config.push.repeat),
                is_asleep=self.signalling.targets.is_asleep, metrics=self.push.metrics,
            )
        self.trunk_registrations = [
            TrunkRegistration(trunk, self.transactions, self.transport, config.public_address)
            for trunk in config.trunks if trunk.register
        ]
        request_counts = RequestCounts()
        guard_counts = self.guard.counts
        self.metrics = GatewayMetrics(request_counts, {
            "ws2sip_flows": ("open SIP flows (WebSocket, TCP, TLS, UDP peers)",
                             lambda: self.transport.flow_count),
            "ws2sip_transactions": ("SIP transactions in progress",
                                    lambda: self.transactions.transaction_count),
            "ws2sip_dialogs": ("dialogs routed through this node",
                               lambda: len(self.signalling.dialogs)),
            "ws2sip_media_sessions": ("calls whose media this node anchors",
                                      lambda: self.media.relay.active_sessions),
            "ws2sip_banned_sources": ("source IPs banned after authentication failures",
                                      lambda: self.guard.banned_count),
        }, counters={
            "ws2sip_connections_refused": (
                "WebSockets refused: over max_connections_per_ip, or from a banned IP",
                lambda: guard_counts.connections_refused),
            "ws2sip_unauthenticated_closed": (
                "WebSockets closed for not authenticating within unauthenticated_timeout",
                lambda: guard_counts.unauthenticated_closed),
            "ws2sip_requests_rate_limited": (
                "SIP requests dropped or answered 503 over max_requests_per_ip",
                lambda: guard_counts.rate_limited),
            "ws2sip_auth_failures": ("wrong passwords and unknown users (SIP and /config.json)",
                                     lambda: guard_counts.auth_failures),
            "ws2sip_bans": ("source IPs this node banned after auth_failures_before_ban",
                            lambda: guard_counts.bans),
        }, async_gauges={
            "ws2sip_bindings": ("registered contacts in the location service",
                                self.location.count),
        })
        self.push.metrics.register(self.metrics.registry)
        self.ssl_context = (self._server_ssl()
                            if config.listeners()["tls"] or config.listeners()["wss"] else None)
        self.drain = NodeDrain(self)
        self._runners: list[web.AppRunner] = []
        self._heartbeat: NodeHeartbeat | None = None
        self._tasks = TaskSet(log, "request handling")
        self.dispatch = dispatch = RequestDispatch(
            domain=config.domain, registrar=self.registrar, proxy=self.proxy,
            addresses=self.signalling.addresses, tasks=self._tasks,
            answer_register_eagerly=self.location.in_process and self.users.in_process,
            counts=request_counts, tag_logs=config.log_format == "json",
        )
        self.transactions.on_request = dispatch
        self.transactions.on_stray_ack = dispatch.stray_ack
        # After the transaction layer set it: the guard sees every message first.
        self.transport.on_message = self.guard.guarding(self.transport.on_message)
        self.transport.admit_connection = self.guard.admit_stream
        self.signalling.proxy.on_peer_trusted = self.guard.peer_trusted
        self.transport.on_flow_closed = self._on_flow_closed

    async def start(self) -> None:
        if self._media_workers is not None:
            await self._media_workers.start()
        if self._local_relay is not None:
            await self._local_relay.start()  # its ICE-TCP listener, where configured
        await self._ensure_users()
        await self.guard.start()
        await self.call_events.start()
        if self.wakeups is not None:
            await self.wakeups.start()
            log.info("push notifications through %s (RFC 8599)", ", ".join(sorted(self.push.names)))
        listeners = self.config.listeners()
        for host, port in listeners["udp"]:
            log.info("SIP/UDP on %s:%d", *await self.transport.listen_udp(host, port))
        for host, port in listeners["tcp"]:
            log.info("SIP/TCP on %s:%d", *await self.transport.listen_tcp(host, port))
        for host, port in listeners["tls"]:
            assert self.ssl_context is not None
            bound = await self.transport.listen_tls(host, port, self.ssl_context)
            log.info("SIP/TLS on %s:%d", *bound)
        for kind in ("ws", "wss"):
            for host, port in listeners[kind]:
                await self._start_http(kind, host, port)
        if self.config.metrics:
            await self._start_metrics(*parse_hostport(self.config.metrics, "metrics"))
        for kind, host, port in self._local_addresses():
            self.signalling.addresses.add_listener(kind, host, port)
        self._heartbeat = NodeHeartbeat(
            self.location, NodeInfo(self.node_id, self._internal_address(), time.time()),
            interval=self.config.node_heartbeat,
            ttl=NODE_HEARTBEATS_MISSED * self.config.node_heartbeat,
        )
        await self._heartbeat.start()
        for registration in self.trunk_registrations:
            registration.start()
        # Everything built so far (modules, config, listeners) lives as long as the process:
        # out of the collector's sight, full collections under load only walk per-request and
        # per-binding objects instead of the whole heap each time.
        gc.freeze()
        # Handling a SIP message allocates hundreds of short-lived containers that reference
        # counting frees; at the default threshold (700) the cycle collector ran every few
        # messages for little gain: 4-6 % of the CPU per call. Its worst case is 50,000 young
        # objects (a few MB) awaiting a collection.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
        if compiled.interpreted_modules() or not compiled.relay_path_built():
            log.warning("ws2sip runs %s", compiled.describe())
        log.info("ws2sip ready: node %s, domain %s", self.node_id, self.config.domain)

    async def stop(self) -> None:
        for registration in self.trunk_registrations:
            await registration.stop()
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        for runner in self._runners:
            await runner.cleanup()
        await self.signalling.close()
        await self.call_events.close()  # after the calls' end events of the shutdown
        if self.proxy.waker is not None:
            self.proxy.waker.close()
        if self.wakeups is not None:
            await self.wakeups.close()
        await self.push.close()
        await self.media.relay.close()
        await self.transport.close()
        self._tasks.cancel_all()
        await self.guard.close()
        await self.location.close()
        await self.users.close()

    # --- HTTP / WebSocket edge ---------------------------------------------------------------
    async def _start_http(self, kind: str, host: str, port: int) -> None:
        secure = kind == "wss"
        config = self.config
        policy = WebSocketPolicy(
            allowed_origins=config.allowed_origins,
            max_message_size=config.max_message_size,
            ping_interval=config.ws_ping_interval,
            idle_timeout=config.ws_idle_timeout,
        )
        ws_handler = make_handler(self.transport, policy, secure=secure, guard=self.guard,
                                  on_flow_open=self.drain.websocket_opened,
                                  draining=lambda: self.drain.draining)
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        WebPhoneSite(
            config, secure=secure, listen=(host, port), settings_auth=self._settings_auth,
        ).add_routes(app, ws_handler)
        app.router.add_get("/healthz", self._health)
        # aiohttp's keep-alive timeout also runs from a connection's start until its first
        # complete request: the guard against half-sent requests (slowloris), which aiohttp
        # would otherwise keep for an hour.
        runner = web.AppRunner(app, access_log=None, logger=RefusedRequestLog(),
                               keepalive_timeout=config.http_header_timeout)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context if secure else None)
        await site.start()
        self._runners.append(runner)
        # Our Via on requests sent down a WebSocket names the listener (or public address).
        for via_host in {host, self.config.public_address or host, "127.0.0.1"}:
            self.transport.add_sent_by(via_host, port)
        log.info("SIP/%s and HTTP on %s:%d (path /ws)", kind.upper(), host, port)

    async def _start_metrics(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/healthz", self._health)
        # `ws2sip drain` (and a Kubernetes preStop hook) posts here, from the node's own host.
        app.router.add_post(DRAIN_PATH, self._start_drain)
        app.router.add_get(STATUS_PATH, status_handler(self.status, self.config.admin_token))
        runner = web.AppRunner(app, access_log=None, logger=RefusedRequestLog(),
                               keepalive_timeout=self.config.http_header_timeout)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)
        log.info("metrics on http://%s/metrics", format_address((host, port)))

    async def status(self) -> dict[str, Any]:
        """What `ws2sip status` shows (gateway/admin.py)."""
        config = self.config
        return {
            "node": self.node_id,
            "domain": config.domain,
            "uptime_seconds": round(time.monotonic() - self._started_at, 1),
            "store": parse_redis_url(config.redis).kind.value if config.redis else "memory",
            "flows": {"total": self.transport.flow_count,
                      "by_transport": self.transport.flow_counts()},
            "registrations": {"bindings": await self.location.count()},
            "calls": {"dialogs": len(self.signalling.dialogs),
                      "media_sessions": self.media.relay.active_sessions,
                      "transactions": self.transactions.transaction_count},
            "limits": {name: getattr(config, name) for name in STATUS_LIMITS},
            "call_events": self.call_events.counts(),
        }

    async def _health(self, request: web.Request) -> web.Response:
        # Public: liveness only. Counts are for /metrics, on its own listener. A draining node
        # is unhealthy first of all, so that the load balancer moves new clients away.
        if self.drain.draining:
            return web.json_response({"status": "draining", "node": self.node_id}, status=503)
        return web.json_response({"status": "ok", "node": self.node_id})

    async def _start_drain(self, request: web.Request) -> web.Response:
        # The metrics listener may be opened to a Prometheus server elsewhere: a drain takes
        # the node out of service, so only a local process may ask for it.
        if not is_loopback(request.remote):
            log.warning("drain asked from %s refused: only from the node's own host",
                        request.remote)
            raise web.HTTPForbidden(text="drain only from the node's own host (loopback)\n")
        log.warning("drain asked through the metrics listener")
        self.drain.start()
        return web.json_response({"status": "draining", "node": self.node_id,
                                  "drain_grace": self.config.drain_grace,
                                  "drain_timeout": self.config.drain_timeout}, status=202)

    def _server_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise SystemExit(
                f"cannot load tls_cert {self.config.tls_cert} / tls_key {self.config.tls_key}: "
                f"{error}. Browsers refuse self-signed certificates on wss:// without a word: "
                "use a certificate from a CA they trust"
            ) from error
        return context

    # --- flows -------------------------------------------------------------------------------
    def _on_flow_closed(self, flow: Flow) -> None:
        self.guard.flow_closed(flow)
        self.drain.flow_closed(flow)
        if flow.reliable:
            self._tasks.spawn(self._drop_flow_bindings(flow))
        self.proxy.flow_closed(flow)

    async def _drop_flow_bindings(self, flow: Flow) -> None:
        dropped = await self.location.remove_connection(self.node_id, flow.id)
        if dropped:
            log.info("%s closed: dropped %d binding(s) of %s", flow.id, len(dropped),
                     ", ".join(sorted({b.aor for b in dropped})))

    # --- helpers -----------------------------------------------------------------------------
    async def _ensure_users(self) -> None:
        if not self.config.demo_users or await self.users.list(self.config.domain):
            return
        lines = []
        for name in DEMO_USERS:
            password = generate_password()
            await self.users.add(name, self.config.domain, password)
            lines.append(f"  {name}@{self.config.domain}  password: {password}")
        # Our own text, lines included: no arguments, which the log filter would escape.
        log.warning(
            "empty user store: created demo users (passwords shown only this once):\n"
            + "\n".join(lines) + "\nmanage users with `ws2sip user add|del|passwd|list`"
        )

    def _local_addresses(self) -> list[tuple[str, str, int]]:
        addresses = []
        for kind in ("udp", "tcp", "tls"):
            bound = self.transport.listening(kind)
            if bound is not None:
                addresses.append((kind, *bound))
        for kind in ("ws", "wss"):
            addresses.extend((kind, host, port) for host, port in self.config.listeners()[kind])
        return addresses

    @staticmethod
    def _media_relay(config: Config) -> MediaRelay | MediaWorkers:
        port_min, port_max = config.rtp_port_range
        bind_host = config.media_address or _first_specific_host(config) or "0.0.0.0"
        public_host = config.public_address or None
        if public_host is None and bind_host in WILDCARD_HOSTS:
            public_host = primary_address()
            log.warning(
                "media: no --public-address; announcing %s in SDP (set --public-address "
                "behind NAT, or browsers and phones will not reach the media ports)", public_host,
            )
        ice_tcp_listen = (parse_hostport(config.ice_tcp_listen, "ice_tcp_listen")
                          if config.ice_tcp_listen else None)
        if config.media_workers:
            return MediaWorkers(
                config.media_workers, bind_host=bind_host, public_host=public_host,
                port_min=port_min, port_max=port_max,
                gc_threshold=(GC_YOUNG_THRESHOLD, 20, 100), latch=config.latch_policy,
                ice_tcp_listen=ice_tcp_listen,
                ice_tcp_advertised_port=config.ice_tcp_advertised_port,
            )
        return MediaRelay(
            bind_host=bind_host,
            public_host=public_host,
            port_min=port_min,
            port_max=port_max,
            latch=config.latch_policy,
            ice_tcp_listen=ice_tcp_listen,
            ice_tcp_advertised_port=config.ice_tcp_advertised_port,
        )

    def _internal_address(self) -> str:
        for kind in ("tcp", "udp"):
            bound = self.transport.listening(kind)
            if bound is not None:
                host = announced_host(bound[0], self.config.public_address)
                return f"{format_address((host, bound[1]))};transport={kind}"
        return ""


def _first_specific_host(config: Config) -> str | None:
    for addresses in config.listeners().values():
        for host, _ in addresses:
            if host not in WILDCARD_HOSTS:
                return host
    return None


def primary_address() -> str:
    """The address of the interface holding the default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only consults the routing table
            host: str = probe.getsockname()[0]
            return host
        except OSError:
            return "127.0.0.1"
