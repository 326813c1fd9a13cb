"""Limits on what one source address may cost the gateway (issue 14, item 7).

- Connections per source IP: past `max_connections_per_ip`, a WebSocket upgrade is refused
  with 429 and a SIP TCP/TLS connection closed as soon as it is accepted.
- A WebSocket or SIP TCP/TLS connection that has not authenticated (a REGISTER or any request
  whose digest verified, or for another node of the cluster a request with a valid hop token)
  within `unauthenticated_timeout` is closed, however much it answers pings. Trunks' trusted
  sources have no deadline: they never send digest.
- SIP requests per source IP (Kamailio's pike): past `max_requests_per_ip` in one
  `request_window`, requests are dropped over UDP (answering would reflect toward a spoofed
  source) and answered `503` with Retry-After over connections (whose source is proven).
- Authentication failures per source IP (fail2ban): `auth_failures_before_ban` wrong digests
  within `auth_failure_window` ban the address for `ban_time`: its requests are dropped, its
  connections closed, its WebSockets refused. With Redis, failures are counted and bans
  published there, so every node of the cluster applies them (BanList / RedisBanList).

Trunks' trusted source addresses are never limited. Every refusal is counted for /metrics and
logged once per offender and episode, not once per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from sip.flow import Flow
from sip.message import Request, Response
from sip.tasks import TaskSet

from .config import Config, TrustedSource
from .redis_connect import open_redis, parse_redis_url

log = logging.getLogger(f"ws2sip.{__name__}")

# The flow the request being handled came in on: set around each message's dispatch, and
# inherited by the tasks that dispatch spawns, so that the authenticator's verdict reaches the
# connection it concerns without passing the flow through every call.
source_flow: contextvars.ContextVar[Flow | None] = contextvars.ContextVar(
    "ws2sip_source_flow", default=None
)
MessageHandler = Callable[[Request | Response, Flow], None]
REDIS_KEY_PREFIX = "ws2sip:guard:"
BAN_KEY_PREFIX = REDIS_KEY_PREFIX + "ban:"  # + IP; expires with the ban
BAN_CHANNEL = REDIS_KEY_PREFIX + "bans"  # "IP milliseconds" for every new ban
RESUBSCRIBE_DELAY = 1.0
# Connections for failure counts, bans and the ban channel; more callers wait up to the timeout.
BAN_POOL_SIZE = 16
BAN_POOL_WAIT_SECONDS = 10.0
# Sources counted per request window: a flood from spoofed UDP addresses must not grow the table
# without bound; past this, new sources go uncounted until the next window.
MAX_COUNTED_SOURCES = 100_000


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    max_connections_per_ip: int  # WebSocket, TCP and TLS together; 0: unlimited
    unauthenticated_timeout: float  # seconds; 0: no deadline
    max_requests_per_ip: int  # per request_window; 0: unlimited
    request_window: float
    auth_failures_before_ban: int  # 0: never ban
    auth_failure_window: float
    ban_time: float
    # The trunks' trusted sources (any transport or port): never limited. Parsed by the same
    # rule as trunk trust, so CIDR ranges and "udp:IP:PORT" entries are exempt too.
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_config(cls, config: Config) -> GuardPolicy:
        return cls(
            max_connections_per_ip=config.max_connections_per_ip,
            unauthenticated_timeout=config.unauthenticated_timeout,
            max_requests_per_ip=config.max_requests_per_ip,
            request_window=config.request_window,
            auth_failures_before_ban=config.auth_failures_before_ban,
            auth_failure_window=config.auth_failure_window,
            ban_time=config.ban_time,
            exempt=tuple(TrustedSource.parse(source).network
                         for trunk in config.trunks for source in trunk.trusted_sources),
        )

    def is_exempt(self, ip: str) -> bool:
        """Asked only once a limit is reached, so the parse costs nothing per request."""
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)


class GuardCounts:
    """What the guard refused since start, for /metrics."""

    __slots__ = ("auth_failures", "bans", "connections_refused", "rate_limited",
                 "unauthenticated_closed")

    def __init__(self) -> None:
        self.connections_refused = 0  # WebSockets over the per-IP cap or from a banned IP
        self.unauthenticated_closed = 0
        self.rate_limited = 0  # SIP requests dropped or answered 503
        self.auth_failures = 0
        self.bans = 0  # bans this node decided


class BanList:
    """Banned addresses with their expiry, in this process only."""

    def __init__(self) -> None:
        self.banned: dict[str, float] = {}  # IP -> monotonic expiry
        self._failures: dict[str, list[float]] = {}  # IP -> failure times within the window

    def is_banned(self, ip: str) -> bool:
        expiry = self.banned.get(ip)
        if expiry is None:
            return False
        if time.monotonic() < expiry:
            return True
        del self.banned[ip]
        return False

    def add(self, ip: str, seconds: float) -> None:
        self.banned[ip] = time.monotonic() + seconds

    async def count_failure(self, ip: str, window: float) -> int:
        """Failures of `ip` within the last `window` seconds, this one included."""
        now = time.monotonic()
        recent = [at for at in self._failures.get(ip, ()) if now - at < window]
        recent.append(now)
        self._failures[ip] = recent
        if len(self._failures) > 10_000:  # forget the oldest offenders rather than grow
            del self._failures[next(iter(self._failures))]
        return len(recent)

    async def publish(self, ip: str, seconds: float) -> None:
        """Tell the other nodes (none here)."""

    async def start(self, on_ban: Callable[[str, float], None]) -> None:
        """Receive the other nodes' bans (none here)."""

    async def close(self) -> None:
        pass


class RedisBanList(BanList):
    """Failures counted and bans kept in Redis (keys expire on their own) and published, so a
    ban decided on one node applies on all; each node keeps a local copy to check per packet."""

    def __init__(self, url: str) -> None:
        super().__init__()
        # Any URL form of gateway/redis_connect.py. Bytes replies (no decoding), as _listen
        # expects.
        self._redis = open_redis(parse_redis_url(url), max_connections=BAN_POOL_SIZE,
                                 pool_timeout=BAN_POOL_WAIT_SECONDS, decode_responses=False)
        self._listener: asyncio.Task[None] | None = None

    async def count_failure(self, ip: str, window: float) -> int:
        key = f"{REDIS_KEY_PREFIX}failures:{ip}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, max(1, round(window)), nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def publish(self, ip: str, seconds: float) -> None:
        milliseconds = max(1, round(seconds * 1000))
        await self._redis.set(BAN_KEY_PREFIX + ip, "1", px=milliseconds)
        await self._redis.publish(BAN_CHANNEL, f"{ip} {milliseconds}")

    async def start(self, on_ban: Callable[[str, float], None]) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(BAN_CHANNEL)
        # Bans decided before this node started: still in force for their remaining time.
        async for key in self._redis.scan_iter(match=BAN_KEY_PREFIX + "*"):
            remaining_ms = await self._redis.pttl(key)
            if remaining_ms > 0:
                on_ban(key.decode()[len(BAN_KEY_PREFIX):], remaining_ms / 1000)
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub, on_ban))

    async def _listen(self, pubsub: aioredis.client.PubSub,
                      on_ban: Callable[[str, float], None]) -> None:
        try:
            while True:
                try:
                    async for message in pubsub.listen():
                        ip, _, milliseconds = message["data"].decode().partition(" ")
                        on_ban(ip, int(milliseconds) / 1000)
                except (aioredis.RedisError, OSError, ValueError) as error:
                    # Redis restarts or fails over: resubscribe (redis-py reconnects).
                    log.warning("bans from other nodes: %s; subscribing again", error)
                    await asyncio.sleep(RESUBSCRIBE_DELAY)
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()


class EdgeGuard:
    def __init__(self, policy: GuardPolicy, bans: BanList,
                 respond: Callable[[Response, Flow], None]) -> None:
        self.policy = policy
        self.counts = GuardCounts()
        self._bans = bans
        self._respond = respond  # sends a response straight back on a flow, statelessly
        self._connections: dict[str, int] = {}  # open WebSockets and TCP/TLS connections per IP
        self._streams: set[Flow] = set()  # accepted TCP/TLS connections counted there
        self._over_cap: set[str] = set()  # IPs refused since they last went below the cap
        self._awaiting_auth: dict[Flow, asyncio.TimerHandle] = {}
        self._logged_unauthenticated: set[str] = set()  # IPs whose closing was logged
        self._requests: dict[str, int] = {}  # requests per IP in the current window
        self._limited: dict[str, int] = {}  # IP -> requests refused in this episode
        self._window: asyncio.TimerHandle | None = None
        self._tasks = TaskSet(log, "counting an authentication failure")

    async def start(self) -> None:
        await self._bans.start(self._apply_ban)

    async def close(self) -> None:
        for timer in self._awaiting_auth.values():
            timer.cancel()
        if self._window is not None:
            self._window.cancel()
        self._tasks.cancel_all()
        await self._bans.close()

    def is_banned(self, ip: str) -> bool:
        return self._bans.is_banned(ip)

    @property
    def banned_count(self) -> int:
        return sum(1 for ip in list(self._bans.banned) if self._bans.is_banned(ip))

    # --- connections -------------------------------------------------------------------------
    def connection_refusal(self, ip: str) -> tuple[int, str] | None:
        """The HTTP status and reason refusing a WebSocket from `ip`, or None (and it is
        counted as open until connection_closed)."""
        if self._bans.is_banned(ip):
            self.counts.connections_refused += 1
            return 403, "address banned after repeated authentication failures"
        cap = self.policy.max_connections_per_ip
        count = self._connections.get(ip, 0)
        if cap and count >= cap and not self.policy.is_exempt(ip):
            self.counts.connections_refused += 1
            if ip not in self._over_cap:
                self._over_cap.add(ip)
                log.warning("%s holds %d connections, the per-IP limit: refusing more "
                            "(logged once until it drops below)", ip, cap)
            return 429, f"too many connections from {ip}"
        self._connections[ip] = count + 1
        return None

    def connection_closed(self, ip: str) -> None:
        count = self._connections.get(ip, 0) - 1
        if count > 0:
            self._connections[ip] = count
        else:
            self._connections.pop(ip, None)
        if count < self.policy.max_connections_per_ip:
            self._over_cap.discard(ip)

    def admit_stream(self, flow: Flow) -> bool:
        """The transport layer's admit_connection, for SIP over TCP/TLS: the same per-IP cap,
        bans and authentication deadline as WebSockets, except for trunks' trusted sources
        (they never send digest). The other nodes of a cluster authenticate with their hop
        tokens instead (`peer_trusted`)."""
        ip = flow.remote[0]
        if self.connection_refusal(ip) is not None:
            return False
        self._streams.add(flow)
        if not self.policy.is_exempt(ip):
            self.await_authentication(flow)
        return True

    def await_authentication(self, flow: Flow) -> None:
        """Close `flow` unless a request on it authenticates within the deadline."""
        timeout = self.policy.unauthenticated_timeout
        if timeout > 0:
            self._awaiting_auth[flow] = asyncio.get_running_loop().call_later(
                timeout, self._close_unauthenticated, flow)

    def flow_closed(self, flow: Flow) -> None:
        timer = self._awaiting_auth.pop(flow, None)
        if timer is not None:
            timer.cancel()
        if flow in self._streams:
            self._streams.discard(flow)
            self.connection_closed(flow.remote[0])

    def _close_unauthenticated(self, flow: Flow) -> None:
        if self._awaiting_auth.pop(flow, None) is None:
            return
        self.counts.unauthenticated_closed += 1
        ip = flow.remote[0]
        if ip not in self._logged_unauthenticated:
            if len(self._logged_unauthenticated) >= MAX_COUNTED_SOURCES:
                self._logged_unauthenticated.clear()
            self._logged_unauthenticated.add(ip)
            log.info("%s from %s: no authenticated request within %g s; closing (more from "
                     "this address are only counted on /metrics)", flow.id, ip,
                     self.policy.unauthenticated_timeout)
        flow.close()

    # --- authentication (gateway.auth.Authenticator's observers) ------------------------------
    def authenticated(self, username: str) -> None:
        flow = source_flow.get()
        if flow is not None:
            self.peer_trusted(flow)

    def peer_trusted(self, flow: Flow) -> None:
        """A request on `flow` proved who sent it (digest, or another node's hop token)."""
        if self._awaiting_auth:
            timer = self._awaiting_auth.pop(flow, None)
            if timer is not None:
                timer.cancel()

    def authentication_failed(self, username: str) -> None:
        flow = source_flow.get()
        if flow is not None:
            self.failed_from(flow.remote[0], username)

    def failed_from(self, ip: str, username: str) -> None:
        """A wrong password (or unknown user) from `ip`: ban it after too many."""
        self.counts.auth_failures += 1
        if self.policy.auth_failures_before_ban and not self.policy.is_exempt(ip):
            self._tasks.spawn(self._count_failure(ip, username))

    async def _count_failure(self, ip: str, username: str) -> None:
        policy = self.policy
        try:
            failures = await self._bans.count_failure(ip, policy.auth_failure_window)
            if failures != policy.auth_failures_before_ban:
                return  # below the limit, or already banned for this run of failures
            self.counts.bans += 1
            log.warning("%s banned for %g s: %d authentication failures within %g s "
                        "(last as %r)", ip, policy.ban_time, failures,
                        policy.auth_failure_window, username)
            self._apply_ban(ip, policy.ban_time)
            await self._bans.publish(ip, policy.ban_time)
        except Exception as error:  # Redis down: this node still counts, nothing else breaks
            log.warning("ban bookkeeping for %s failed: %s", ip, error)

    def _apply_ban(self, ip: str, seconds: float) -> None:
        self._bans.add(ip, seconds)

    # --- SIP messages (wraps the transport layer's on_message) ---------------------------------
    def admit(self, message: Request | Response, flow: Flow) -> bool:
        """Whether to handle `message`; False after dropping or refusing it."""
        ip = flow.remote[0]
        if self._bans.banned and self._bans.is_banned(ip):
            if flow.reliable:
                flow.close()
            return False
        limit = self.policy.max_requests_per_ip
        if not limit or not isinstance(message, Request):
            return True
        requests = self._requests
        count = requests.get(ip, 0) + 1
        if count == 1 and len(requests) >= MAX_COUNTED_SOURCES:
            return True
        requests[ip] = count
        if self._window is None:
            self._window = asyncio.get_running_loop().call_later(
                self.policy.request_window, self._next_window)
        if count <= limit or self.policy.is_exempt(ip):
            return True
        self.counts.rate_limited += 1
        refused = self._limited.get(ip)
        if refused is None:
            log.warning("%s sends over %d requests per %g s: %s its requests until it slows "
                        "down (logged once)", ip, limit, self.policy.request_window,
                        "answering 503 to" if flow.reliable else "dropping")
            refused = 0
        self._limited[ip] = refused + 1
        if flow.reliable and message.method != "ACK":
            response = message.response(503, "Too many requests from your address")
            response.add("Retry-After", str(max(1, round(self.policy.request_window))))
            self._respond(response, flow)
        return False

    def _next_window(self) -> None:
        previous, self._requests = self._requests, {}
        self._window = None
        limit = self.policy.max_requests_per_ip
        for ip in [ip for ip in self._limited if previous.get(ip, 0) <= limit]:
            log.info("%s is below the request limit again (%d requests refused)", ip,
                     self._limited.pop(ip))

    def guarding(self, handle: MessageHandler) -> MessageHandler:
        """The transport layer's on_message: `handle` for admitted messages, with source_flow
        set for the authenticator's observers."""
        admit = self.admit
        set_source = source_flow.set

        def on_message(message: Request | Response, flow: Flow) -> None:
            if admit(message, flow):
                # Not reset afterwards (a third of this wrapper's cost): the next message sets
                # its own, and the tasks this one spawns have copied it.
                set_source(flow)
                handle(message, flow)

        return on_message


def open_ban_list(redis_url: str | None) -> BanList:
    return RedisBanList(redis_url) if redis_url else BanList()
