"""A node's life after start-up: draining it before it stops, and reloading its configuration.

Drain (SIGTERM, or `ws2sip drain` through the private metrics listener):
1. /healthz answers 503 "draining", so the load balancer sends no one new here; new WebSocket
   upgrades get 503 and new INVITEs 503 with Retry-After (in-dialog requests go on).
2. After `drain_grace` seconds (the balancer's health check has seen it), WebSockets that carry
   no call are closed with 1001 Going Away: clients reconnect, through the balancer, elsewhere.
   A WebSocket whose calls end is closed the same way.
3. Calls in progress may go on for `drain_timeout` seconds; whatever is left then is cut.
SIP over TCP/TLS stays open to peers: other nodes and trunks send the running calls' BYEs there.

Reload (SIGHUP): the configuration file and the users file are read again and checked in full
before anything changes; a bad one is refused with one log line and the running configuration
stays. What changes live: users, trunks, the TLS/WSS certificate (new handshakes), and the
limits listed in RELOADABLE. Other settings need a restart, which the reload says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from sip.flow import Flow
from sip.transaction import TransactionLayer
from sip.transport import TransportLayer

from .config import Config, ConfigError
from .dispatch import RequestDispatch
from .edge_guard import EdgeGuard, GuardPolicy
from .media import MediaAnchor
from .proxy import Proxy
from .registrar import Registrar, RegistrarPolicy
from .trunk_registration import TrunkRegistration
from .users import FileUserStore, UserStore
from .wiring import Signalling

log = logging.getLogger(f"ws2sip.{__name__}")

DRAIN_POLL_SECONDS = 0.25
# Settings a reload applies to the running node (the users file's contents always reload).
RELOADABLE = frozenset({
    "trunks", "tls_cert", "tls_key", "max_calls_per_user", "max_flows", "max_transactions",
    "max_dialogs", "max_media_sessions", "max_contacts", "min_expires", "max_expires",
    "default_expires", "flow_timer", "max_connections_per_ip", "unauthenticated_timeout",
    "max_requests_per_ip", "request_window", "auth_failures_before_ban", "auth_failure_window",
    "ban_time", "drain_grace", "drain_timeout",
})


class Node(Protocol):
    """The parts of a running node (gateway.app.Gateway) that a drain and a reload change."""

    config: Config
    node_id: str
    transport: TransportLayer
    transactions: TransactionLayer
    signalling: Signalling
    dispatch: RequestDispatch
    users: UserStore
    ssl_context: ssl.SSLContext | None
    media: MediaAnchor
    guard: EdgeGuard
    registrar: Registrar
    proxy: Proxy
    trunk_registrations: list[TrunkRegistration]


class NodeDrain:
    """Takes a node out of service without cutting its calls (the module's docstring)."""

    def __init__(self, gateway: Node) -> None:
        self._gateway = gateway
        self.draining = False
        self._websockets: set[Flow] = set()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- what the edge asks ------------------------------------------------------------------
    def websocket_opened(self, flow: Flow) -> None:
        self._websockets.add(flow)

    def flow_closed(self, flow: Flow) -> None:
        self._websockets.discard(flow)

    # --- the drain ---------------------------------------------------------------------------
    def start(self) -> None:
        """Begin draining (again: nothing more); `finished` is set when the node may stop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def finished(self) -> None:
        await self._done.wait()

    async def _run(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("drain failed; stopping now")
        finally:
            self._done.set()

    async def _drain(self) -> None:
        gateway = self._gateway
        config = gateway.config
        self.draining = True
        gateway.dispatch.refuse_new_calls = True
        log.warning(
            "draining: /healthz 503, new WebSockets and calls refused; idle WebSockets close "
            "in %gs, then %d call(s) may go on up to %gs", config.drain_grace, self._calls(),
            config.drain_timeout,
        )
        await asyncio.sleep(config.drain_grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.drain_timeout
        idle_before: set[Flow] = set()
        while True:
            calls = self._calls()
            # A WebSocket idle on two polls in a row: the last response of its call (the BYE's
            # 200) has left before the close.
            idle = {flow for flow in self._websockets if not self._carries_call(flow)}
            for flow in idle & idle_before:
                flow.close()  # 1001 Going Away
            idle_before = idle
            if calls == 0 and not self._websockets:
                log.warning("drained: no calls and no WebSockets left")
                return
            if loop.time() >= deadline:
                log.warning("drain_timeout %gs reached: cutting %d call(s) and %d WebSocket(s)",
                            config.drain_timeout, calls, len(self._websockets))
                for flow in list(self._websockets):
                    flow.close()
                return
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    def _calls(self) -> int:
        return sum(1 for dialog in self._gateway.signalling.dialogs.all()
                   if dialog.method == "INVITE")

    def _carries_call(self, flow: Flow) -> bool:
        return any(dialog.method == "INVITE"
                   for dialog in self._gateway.signalling.dialogs.on_flow(flow.id))


class ConfigReload:
    """SIGHUP: `load` reads the configuration as at start-up (file, then flags)."""

    def __init__(self, gateway: Node, load: Callable[[], Config]) -> None:
        self._gateway = gateway
        self._load = load

    async def reload(self) -> bool:
        """Apply the new configuration; False (and one log line) when it was refused."""
        gateway = self._gateway
        running = gateway.config
        try:
            new = self._load()
            users = (gateway.users.read_file()
                     if isinstance(gateway.users, FileUserStore) else None)
            certificate = (load_certificate(new.tls_cert, new.tls_key)
                           if gateway.ssl_context is not None else None)
        except (ConfigError, ValueError, OSError, ssl.SSLError) as error:
            log.error("reload refused, the running configuration stays: %s", error)
            return False
        if users is not None:
            assert isinstance(gateway.users, FileUserStore)
            gateway.users.adopt(users)
        if certificate is not None and gateway.ssl_context is not None:
            gateway.ssl_context.load_cert_chain(new.tls_cert, new.tls_key)
        changed = {f.name for f in dataclasses.fields(Config)
                   if getattr(new, f.name) != getattr(running, f.name)}
        restart = sorted(changed - RELOADABLE)
        applied = {name: getattr(new, name) for name in changed & RELOADABLE}
        gateway.config = dataclasses.replace(running, **applied)
        await self._apply(gateway.config, trunks_changed="trunks" in applied)
        log.warning("reloaded: %s%s", ", ".join(sorted(applied)) or "no setting changed",
                    f" (users file: {len(users.users)} users)" if users is not None else "")
        if restart:
            log.warning("reload: %s changed but need(s) a restart; running values kept",
                        ", ".join(restart))
        return True

    async def _apply(self, config: Config, *, trunks_changed: bool) -> None:
        gateway = self._gateway
        gateway.transport.max_flows = config.max_flows
        gateway.transactions.max_transactions = config.max_transactions
        gateway.signalling.dialogs.max_dialogs = config.max_dialogs
        gateway.media.max_sessions = config.max_media_sessions
        gateway.guard.policy = GuardPolicy.from_config(config)
        gateway.registrar.reconfigure(RegistrarPolicy(
            domain=config.domain, node_id=gateway.node_id, min_expires=config.min_expires,
            max_expires=config.max_expires, default_expires=config.default_expires,
            flow_timer=config.flow_timer, max_contacts=config.max_contacts,
        ))
        gateway.signalling.targets.reconfigure(config.max_calls_per_user, config.trunks)
        gateway.proxy.trust_trunks(config.trunks)
        if trunks_changed:
            for registration in gateway.trunk_registrations:
                await registration.stop()
            gateway.trunk_registrations = [
                TrunkRegistration(trunk, gateway.transactions, gateway.transport,
                                  config.public_address)
                for trunk in config.trunks if trunk.register
            ]
            for registration in gateway.trunk_registrations:
                registration.start()


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def load_certificate(cert: str, key: str) -> ssl.SSLContext:
    """A server context with this certificate and key; raises OSError or SSLError (naming the
    files) when they cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ssl.SSLError(f"cannot load tls_cert {cert} / tls_key {key}: {error}") from error
    return context
