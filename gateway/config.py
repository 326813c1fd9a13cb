"""Gateway configuration: a TOML file (`--config`) overridden by command-line flags.

Every setting has the same name in both places (`--public-address` ⇔ `public_address`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sip.flow import parse_address

from .logformat import LOG_FORMATS
from .redis_connect import RedisKind, parse_redis_url

if TYPE_CHECKING:
    from webrtc.plain import LatchPolicy

LISTENER_KINDS = ("udp", "tcp", "tls", "ws", "wss")
MIN_MESSAGE_SIZE = 1024  # below this not even a plain REGISTER fits
DEFAULT_LISTENERS = {"udp": ["0.0.0.0:5060"], "tcp": ["0.0.0.0:5060"], "ws": ["0.0.0.0:8080"]}


class ConfigError(Exception):
    """A setting that cannot be used; the message names the setting and the value."""


@dataclass(frozen=True, slots=True)
class Trunk:
    """A named upstream SIP peer such as an Asterisk PBX."""

    name: str
    address: str  # host:port
    transport: str = "udp"
    match: str = ""  # regex on the dialled user part for outbound calls ("" = never)
    strip_prefix: str = ""
    # Sources whose requests are trusted as this trunk, never over WebSocket (TrustedSource).
    trusted_sources: tuple[str, ...] = ()
    username: str = ""  # digest credentials the gateway answers the trunk's challenges with
    password: str = ""
    register: bool = False  # REGISTER to the trunk as `username`
    max_calls: int = 0  # concurrent calls through this trunk (0 = unlimited)


SOURCE_TRANSPORTS = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class PushSettings:
    """The [push] table: RFC 8599 push notifications that wake sleeping mobile apps
    (gateway/push). Each key is also a flag: `--push-<key>` (e.g. --push-apns-key-file)."""

    wait: float = 20.0  # seconds a call waits for the woken device's REGISTER, then 480
    repeat: float = 5.0  # seconds between pushes while waiting (delivery is not guaranteed)
    ca_file: str = ""  # CA bundle to verify the push services with; "" = the system's
    apns_url: str = "https://api.push.apple.com"  # sandbox: https://api.sandbox.push.apple.com
    apns_key_file: str = ""  # the .p8 token-signing key from Apple; "" = APNs off
    apns_key_id: str = ""  # its 10-character key id
    apns_team_id: str = ""  # the Apple developer team id (the token's issuer)
    # FCM HTTP v1 and Web Push (gateway/push/fcm.py, webpush.py).
    fcm_url: str = "https://fcm.googleapis.com"  # another: an egress proxy, a test service
    fcm_service_account: str = ""  # the Firebase service-account JSON key file; "" = FCM off
    webpush_vapid_key_file: str = ""  # P-256 PEM key signing Web Push (VAPID); "" = off
    webpush_subject: str = ""  # mailto: or https: contact for the push services (RFC 8292)

    @property
    def apns_enabled(self) -> bool:
        return bool(self.apns_key_file)


@dataclass(frozen=True, slots=True)
class TrustedSource:
    """One entry of a trunk's trusted_sources: `[TRANSPORT:]ADDRESS[/PREFIX][:PORT]`, e.g.
    "10.0.0.20", "10.0.0.0/24", "udp:192.0.2.10:5060", "tls:[2001:db8::1]:5061". Without a
    transport it matches UDP, TCP and TLS; without a port, any port. WebSocket flows never
    match: browsers may share the trunk's address (one NAT, a reverse proxy on the PBX)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None
    transport: str | None = None

    @classmethod
    def parse(cls, text: str) -> TrustedSource:
        rest = text.strip()
        transport: str | None = None
        head, sep, tail = rest.partition(":")
        if sep and head.lower() in SOURCE_TRANSPORTS:
            transport, rest = head.lower(), tail
        elif sep and head.lower() in ("ws", "wss"):
            raise ConfigError(f"trusted source {text!r}: WebSocket flows are never trusted")
        port: int | None = None
        if rest.startswith("["):  # [IPv6] or [IPv6]:port or [IPv6/prefix]:port
            address, _, after = rest[1:].partition("]")
            if after:
                port = _source_port(after.removeprefix(":"), text, after.startswith(":"))
        elif rest.count(":") == 1:  # IPv4 with a port
            address, _, port_text = rest.partition(":")
            port = _source_port(port_text, text, True)
        else:  # IPv4 or bare IPv6, no port
            address = rest
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError as error:
            raise ConfigError(
                f"trusted source {text!r}: expected [udp|tcp|tls:]IP[/PREFIX][:PORT] ({error})"
            ) from error
        return cls(network, port, transport)

    def matches(self, transport: str, host: str, port: int) -> bool:
        if self.transport is not None and transport != self.transport:
            return False
        if self.port is not None and port != self.port:
            return False
        try:
            return ipaddress.ip_address(host) in self.network
        except ValueError:
            return False


def _source_port(text: str, source: str, present: bool) -> int:
    if not present or not text.isdigit() or not 0 < int(text) <= 65535:
        raise ConfigError(f"trusted source {source!r}: expected a port 1-65535 after ':'")
    return int(text)


@dataclass(frozen=True, slots=True)
class Config:
    domain: str = "localhost"
    udp: tuple[str, ...] = ()
    tcp: tuple[str, ...] = ()
    tls: tuple[str, ...] = ()
    ws: tuple[str, ...] = ()
    wss: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    redis: str = ""
    users_file: str = ""
    node_id: str = ""
    public_address: str = ""
    rtp_ports: str = "20000-40000"
    media_address: str = ""  # where media sockets bind; default: the first specific SIP listener
    media_workers: int = 0  # relay processes sharing rtp_ports; 0: media in the gateway process
    # ICE-TCP (webrtc/ice_tcp.py): HOST:PORT of the one TCP listener carrying media of browsers
    # that cannot use UDP; "" = off (the port must be reachable and announced: an operator's
    # choice). ice_tcp_advertised_port: the port put into candidates when it differs (a port
    # forward, 443 outside); 0 = the listener's port.
    ice_tcp_listen: str = ""
    ice_tcp_advertised_port: int = 0
    # Strict source on the plain RTP port (webrtc.plain.LatchPolicy): which sender is the phone.
    rtp_learn_seconds: float = 3.0
    rtp_probation_packets: int = 4
    rtp_probation_seconds: float = 0.2
    rtp_alive_seconds: float = 1.0
    log_level: str = "info"
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = 65_535
    ws_ping_interval: float = 30.0
    ws_idle_timeout: float = 3700.0  # longer than max_expires: clients refresh then
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 600
    flow_timer: int = 120
    auth_secret: str = ""
    nonce_lifetime: int = 300
    # Only MD5 by default: JsSIP aborts on any SHA-256 challenge in the response, and SIPp
    # reads only the first one. Offer SHA-256 (RFC 8760) when every client supports it.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    invite_timeout: float = 60.0
    max_calls_per_user: int = 0
    # Table bounds: past them new peers and requests get 503 with Retry-After.
    max_flows: int = 50_000
    max_transactions: int = 20_000
    max_dialogs: int = 20_000
    max_media_sessions: int = 2_000
    max_contacts: int = 32  # bindings per address-of-record; the oldest go first
    demo_users: bool = True
    # ICE servers handed to the web phone by /config.json. TURN credentials follow the TURN REST
    # API scheme coturn implements (use-auth-secret): HMAC-SHA1 of "<expiry>:<user>".
    stun_uris: tuple[str, ...] = ()
    turn_uris: tuple[str, ...] = ()
    turn_secret: str = ""
    turn_ttl: int = 86_400
    # Abuse limits (gateway/edge_guard.py); 0 turns a limit off.
    max_connections_per_ip: int = 100  # WebSocket+TCP+TLS; a NAT or reverse proxy: more, or 0
    unauthenticated_timeout: float = 30.0  # close a WebSocket or SIP TCP/TLS flow not authenticated
    http_header_timeout: float = 10.0  # close an HTTP connection with no complete request
    max_requests_per_ip: int = 100  # SIP requests per source IP per request_window (pike)
    request_window: float = 2.0
    auth_failures_before_ban: int = 10  # wrong digests per source IP within the window...
    auth_failure_window: float = 600.0
    ban_time: float = 600.0  # ...ban the address this long (on every node, with Redis)
    # /metrics on its own listener (HOST:PORT), never on the public HTTP ones; "" = off.
    metrics: str = ""
    # Graceful drain (SIGTERM, `ws2sip drain`) and reload (SIGHUP): gateway/lifecycle.py.
    drain_grace: float = 5.0  # /healthz says "draining" this long before idle WebSockets close
    drain_timeout: float = 60.0  # then running calls may go on this long before they are cut
    # Cluster liveness: a node misses 3 heartbeats and the others drop its bindings.
    node_heartbeat: float = 5.0
    # Redis high availability. `redis` also takes redis+sentinel:// and redis+cluster:// URLs
    # (gateway/redis_connect.py). Replicas that must hold each registration write (Redis WAIT)
    # before its 200, so that a Sentinel failover loses none; 0: do not wait.
    redis_replica_acks: int = 0
    # Operator hooks (gateway/logformat.py, gateway/call_events.py, gateway/admin.py).
    log_format: str = "text"  # or "json": one object per line with node, Call-ID, user, flow
    events_webhook: str = ""  # http(s) URL each call event is POSTed to as JSON; "" = off
    events_stream: str = ""  # Redis stream key call events are XADDed to (with redis); "" = off
    events_stream_maxlen: int = 100_000  # XADD MAXLEN ~: the stream's approximate bound
    admin_token: str = ""  # Bearer token for /admin/status from other hosts; "" = loopback only
    trunks: tuple[Trunk, ...] = field(default_factory=tuple)
    push: PushSettings = field(default_factory=PushSettings)

    def listeners(self) -> dict[str, list[tuple[str, int]]]:
        """Listen addresses per transport; the embedded defaults when none is configured."""
        chosen = {kind: list(getattr(self, kind)) for kind in LISTENER_KINDS}
        if not any(chosen.values()):
            chosen.update(DEFAULT_LISTENERS)
        return {kind: [parse_hostport(a, kind) for a in addrs] for kind, addrs in chosen.items()}

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        match = re.fullmatch(r"(\d+)-(\d+)", self.rtp_ports)
        if not match or not 1024 <= int(match[1]) < int(match[2]) <= 65535:
            raise ConfigError(
                f"rtp_ports: expected MIN-MAX within 1024-65535, got {self.rtp_ports!r}"
            )
        return int(match[1]), int(match[2])

    @property
    def latch_policy(self) -> LatchPolicy:
        from webrtc.plain import LatchPolicy  # the media plane only where media runs

        return LatchPolicy(
            learn_seconds=self.rtp_learn_seconds, probation_packets=self.rtp_probation_packets,
            probation_seconds=self.rtp_probation_seconds, alive_seconds=self.rtp_alive_seconds,
        )

    @property
    def users_path(self) -> Path:
        if self.users_file:
            return Path(self.users_file).expanduser()
        data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
        return data_home / "ws2sip" / "users.json"

    @property
    def effective_node_id(self) -> str:
        # Stable across restarts, so that a restarted node keeps owning its bindings in Redis;
        # several nodes on one host need distinct --node-id values.
        return self.node_id or socket.gethostname()


def parse_hostport(text: str, setting: str) -> tuple[str, int]:
    try:
        host, port = parse_address(text)
    except ValueError:
        host, port = "", -1
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {text!r}")
    return host, port


_SCALARS = {f.name: f for f in fields(Config) if f.name not in ("trunks", "push")}
_PUSH_FIELDS = {f.name: f for f in fields(PushSettings)}
PUSH_FLAG_PREFIX = "push_"  # --push-apns-url sets [push] apns_url
COMMAND_LINE = "command line"  # where a setting came from, when not from a file

# What each annotated type of Config and Trunk accepts, and how an error message says it.
_EXPECTED_TYPES: dict[str, str] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "tuple[str, ...]": "a list of strings",
}
# Numeric settings: the inclusive range each accepts (checked on TOML values and flags alike).
DAY = 86_400
RANGES: dict[str, tuple[int, int]] = {
    "media_workers": (0, 64),
    "ice_tcp_advertised_port": (0, 65535),
    # aiohttp reads a WebSocket limit of 0 as "unlimited": refused rather than the limit dropped.
    "max_message_size": (MIN_MESSAGE_SIZE, 1_048_576),
    "ws_ping_interval": (0, DAY),
    "ws_idle_timeout": (1, 7 * DAY),
    "min_expires": (1, DAY),
    "max_expires": (1, DAY),
    "default_expires": (1, DAY),
    "flow_timer": (1, DAY),
    "nonce_lifetime": (1, DAY),
    "invite_timeout": (0, DAY),
    "max_calls_per_user": (0, 1_000_000),
    "turn_ttl": (1, 7 * DAY),
    "max_calls": (0, 1_000_000),  # trunks
    "max_flows": (1, 10_000_000),
    "max_transactions": (1, 10_000_000),
    "max_dialogs": (1, 10_000_000),
    "max_media_sessions": (1, 1_000_000),
    "max_contacts": (1, 1_000),
    # The edge guard's limits: 0 switches a limit off.
    "max_connections_per_ip": (0, 10_000_000),
    "max_requests_per_ip": (0, 2_000_000_000),
    "auth_failures_before_ban": (0, 1_000_000),
    "unauthenticated_timeout": (0, DAY),
    "http_header_timeout": (0, DAY),
    "request_window": (0, DAY),
    "auth_failure_window": (0, 7 * DAY),
    "ban_time": (0, 365 * DAY),
    "redis_replica_acks": (0, 16),
    "events_stream_maxlen": (1, 100_000_000),
    # Strict source on plain RTP (webrtc.plain.LatchPolicy).
    "rtp_learn_seconds": (0, DAY),
    "rtp_probation_packets": (1, 1_000),
    "rtp_probation_seconds": (0, DAY),
    "rtp_alive_seconds": (0, DAY),
    # Graceful drain (gateway/lifecycle.py).
    "drain_grace": (0, 3_600),
    "drain_timeout": (0, DAY),
    "node_heartbeat": (1, 3_600),
    # [push]
    "wait": (1, 600),
    "repeat": (1, 600),
}


def expected_type(annotation: str) -> str:
    """'an integer', 'a list of strings'…: what a setting of that annotation accepts."""
    return _EXPECTED_TYPES[annotation]


def _type_matches(annotation: str, value: Any) -> bool:
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


def _checked_value(source: str, key: str, annotation: str, value: Any) -> Any:
    """value as the setting stores it, or a ConfigError naming where it came from, the key and
    what is expected."""
    if not _type_matches(annotation, value):
        raise ConfigError(f"{source}: {key}: expected {_describe(annotation, key)}, "
                          f"got {_shown(value)}")
    limits = RANGES.get(key.rpartition(".")[2])
    if limits is not None and not limits[0] <= value <= limits[1]:
        raise ConfigError(f"{source}: {key}: expected {_describe(annotation, key)}, "
                          f"got {_shown(value)}")
    return tuple(value) if isinstance(value, list) else value


def _describe(annotation: str, key: str) -> str:
    limits = RANGES.get(key.rpartition(".")[2])
    text = expected_type(annotation)
    return f"{text} {limits[0]}-{limits[1]}" if limits else text


def _shown(value: Any) -> str:
    """A value as the user wrote it (TOML spelling: strings in double quotes), cut short."""
    if isinstance(value, str):
        return '"' + value[:60].replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)[:60]


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """TOML file settings, then every override that is not None."""
    values: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {path}: {error}") from error
        values.update(_from_toml(raw, path))
    push: dict[str, Any] = values.pop("push", {})
    for name, value in overrides.items():
        if value is not None and name in _SCALARS:
            values[name] = _checked_value(COMMAND_LINE, name, str(_SCALARS[name].type), value)
        key = name.removeprefix(PUSH_FLAG_PREFIX)
        if value is not None and name.startswith(PUSH_FLAG_PREFIX) and key in _PUSH_FIELDS:
            push[key] = _checked_value(COMMAND_LINE, f"push.{key}",
                                       str(_PUSH_FIELDS[key].type), value)
    config = Config(**values, push=PushSettings(**push))
    _check(config)
    return config


def _from_toml(raw: dict[str, Any], path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in ("trunks", "trunk"):
            if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
                raise ConfigError(f"{path}: {key}: expected [[trunks]] tables, got "
                                  f"{_shown(value)}")
            values["trunks"] = tuple(_trunk(entry, path, index)
                                     for index, entry in enumerate(value))
        elif name == "push":
            values["push"] = _push_table(value, path)
        elif name in _SCALARS:
            values[name] = _checked_value(path, name, str(_SCALARS[name].type), value)
        else:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
    return values


def _push_table(table: Any, path: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: push: expected a [push] table, got {_shown(table)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _PUSH_FIELDS:
            raise ConfigError(f"config file {path}: unknown setting push.{key}")
        values[name] = _checked_value(path, f"push.{name}", str(_PUSH_FIELDS[name].type), value)
    return values


_TRUNK_FIELDS = {f.name: f for f in fields(Trunk)}


def _trunk(entry: dict[str, Any], path: str, index: int) -> Trunk:
    unknown = set(entry) - set(_TRUNK_FIELDS)
    if unknown or "name" not in entry or "address" not in entry:
        raise ConfigError(
            f"config file {path}: trunk needs name and address; unknown keys {sorted(unknown)}"
        )
    entry = {key: _checked_value(path, f"trunks[{index}].{key}", str(_TRUNK_FIELDS[key].type),
                                 value)
             for key, value in entry.items()}
    trunk = Trunk(**entry)
    parse_hostport(trunk.address, f"trunk {trunk.name} address")
    if trunk.transport not in ("udp", "tcp", "tls"):
        raise ConfigError(f"trunk {trunk.name}: transport must be udp, tcp or tls")
    for source in trunk.trusted_sources:
        if not isinstance(source, str):
            raise ConfigError(f"trunk {trunk.name}: trusted_sources holds strings, got {source!r}")
        TrustedSource.parse(source)
    if trunk.match:
        try:
            re.compile(trunk.match)
        except re.error as error:
            raise ConfigError(f"trunk {trunk.name}: bad match regex: {error}") from error
    return trunk


def _check(config: Config) -> None:
    """Checks across settings (each one's type and range were checked as it was read)."""
    config.listeners()
    config.rtp_port_range  # noqa: B018 - validates
    port_min, port_max = config.rtp_port_range
    if (port_max - port_min + 1) // max(config.media_workers, 1) < 4:  # a call needs 3 ports
        raise ConfigError(f"rtp_ports {config.rtp_ports}: too few ports, at least 4 per "
                          f"media worker ({config.media_workers})")
    if not 0 < config.min_expires <= config.default_expires <= config.max_expires:
        raise ConfigError("expires: need 0 < min_expires <= default_expires <= max_expires")
    # Seconds that must be more than 0 (the range table's bounds are whole and inclusive).
    for name in ("http_header_timeout", "request_window", "auth_failure_window", "ban_time"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name}: expected seconds > 0, got {getattr(config, name)}")
    if config.metrics:
        parse_hostport(config.metrics, "metrics")
    if config.redis:
        try:
            redis_kind = parse_redis_url(config.redis).kind
        except ValueError as error:
            raise ConfigError(f"redis: {error}") from error
        if config.redis_replica_acks and redis_kind is RedisKind.CLUSTER:
            raise ConfigError("redis_replica_acks: not with a redis+cluster:// URL (WAIT is "
                              "per cluster node); use a single Redis or Sentinel")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: expected text or json, got {config.log_format!r}")
    if config.events_webhook and not config.events_webhook.startswith(("http://", "https://")):
        raise ConfigError(f"events_webhook: expected an http(s) URL, got "
                          f"{config.events_webhook[:60]!r}")
    if config.events_stream and not config.redis:
        raise ConfigError("events_stream needs redis (the stream lives there)")
    if (config.tls or config.wss) and not (config.tls_cert and config.tls_key):
        raise ConfigError("tls/wss listeners need tls_cert and tls_key")
    if not config.digest_algorithms or not set(config.digest_algorithms) <= {"MD5", "SHA-256"}:
        raise ConfigError("digest_algorithms: a list of MD5 and/or SHA-256, most preferred first")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: expected debug|info|warning|error, got {config.log_level!r}")
    _check_ice_servers(config)
    _check_ice_tcp(config)
    _check_push(config.push)


def _check_push(push: PushSettings) -> None:
    if push.repeat > push.wait:
        raise ConfigError(f"push.repeat ({push.repeat:g} s) must not exceed push.wait "
                          f"({push.wait:g} s)")
    if push.apns_enabled and not (push.apns_key_id and push.apns_team_id):
        raise ConfigError("push.apns_key_file needs push.apns_key_id and push.apns_team_id")
    if push.apns_enabled and not push.apns_url.startswith("https://"):
        raise ConfigError(f"push.apns_url: expected an https:// URL, got {push.apns_url!r}")
    if push.webpush_vapid_key_file and not push.webpush_subject.startswith(("mailto:", "https:")):
        raise ConfigError("push.webpush_subject: Web Push needs a mailto: or https: contact for "
                          f"the push services (RFC 8292), got {push.webpush_subject!r}")
    if push.fcm_service_account and not push.fcm_url.startswith("https://"):
        raise ConfigError(f"push.fcm_url: expected an https:// URL, got {push.fcm_url!r}")


def _check_ice_tcp(config: Config) -> None:
    if not config.ice_tcp_listen:
        if config.ice_tcp_advertised_port:
            raise ConfigError("ice_tcp_advertised_port needs ice_tcp_listen")
        return
    parse_hostport(config.ice_tcp_listen, "ice_tcp_listen")


def _check_ice_servers(config: Config) -> None:
    schemes_of = {"stun_uris": ("stun:", "stuns:"), "turn_uris": ("turn:", "turns:")}
    for setting, schemes in schemes_of.items():
        for uri in getattr(config, setting):
            if not uri.startswith(schemes):
                raise ConfigError(f"{setting}: {uri!r} does not start with {' or '.join(schemes)}")
    if config.turn_uris and not config.turn_secret:
        raise ConfigError("turn_uris need turn_secret (the static-auth-secret of coturn)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ws2sip run`; each mirrors a TOML setting of the same name."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--domain", help="SIP domain served (the digest realm); default localhost")
    for kind in LISTENER_KINDS:
        parser.add_argument(
            f"--{kind}", action="append", metavar="HOST:PORT",
            help=f"listen for SIP over {kind.upper()} (repeatable)",
        )
    parser.add_argument("--tls-cert", help="PEM certificate chain for tls and wss listeners")
    parser.add_argument("--tls-key", help="PEM private key for tls and wss listeners")
    parser.add_argument(
        "--redis", metavar="URL",
        help="Redis URL: redis://HOST:PORT/DB, redis+sentinel://H1:P1,H2:P2/MASTER[/DB] or "
        "redis+cluster://H1:P1,H2:P2/; default: embedded in-memory",
    )
    parser.add_argument("--users-file", metavar="PATH", help="users file when Redis is not used")
    parser.add_argument("--node-id", help="this node's id in a cluster (default: host name)")
    parser.add_argument("--public-address", help="address announced in SDP, Via and Record-Route")
    parser.add_argument("--rtp-ports", metavar="MIN-MAX", help="UDP port range for media")
    parser.add_argument("--media-address", help="IP the media sockets bind to")
    parser.add_argument(
        "--rtp-learn-seconds", type=float, metavar="S",
        help="a phone's RTP from an address other than its SDP's (NAT) is learned only this "
        "long after the first packet (default 3)",
    )
    parser.add_argument(
        "--rtp-probation-packets", type=int, metavar="N",
        help="in-sequence RTP packets of one SSRC needed to learn such a source (default 4)",
    )
    parser.add_argument(
        "--rtp-probation-seconds", type=float, metavar="S",
        help="...spanning at least this long (default 0.2)",
    )
    parser.add_argument(
        "--rtp-alive-seconds", type=float, metavar="S",
        help="a learned source heard within this long is never replaced (default 1)",
    )
    parser.add_argument(
        "--media-workers", type=int, metavar="N",
        help="relay media in N worker processes, each with a share of --rtp-ports, so media "
        "uses other cores than SIP (default 0: media in the gateway process)",
    )
    parser.add_argument(
        "--ice-tcp-listen", metavar="HOST:PORT",
        help="accept WebRTC media over TCP (ICE-TCP, RFC 6544 passive candidates) on this one "
        "port, for browsers whose network blocks UDP (default: off)",
    )
    parser.add_argument(
        "--ice-tcp-advertised-port", type=int, metavar="PORT",
        help="port announced in the ICE-TCP candidates when a port forward or TCP proxy "
        "exposes the listener on another one, e.g. 443 (default: the listener's port)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default info)")
    parser.add_argument(
        "--allowed-origin", dest="allowed_origins", action="append", metavar="ORIGIN",
        help="WebSocket Origin allowed to connect (repeatable; '*' for any). Default: the "
        "gateway's own pages and clients that send no Origin",
    )
    parser.add_argument("--max-message-size", type=int, help="largest SIP message accepted")
    parser.add_argument("--min-expires", type=int, help="shortest registration accepted (423)")
    parser.add_argument("--max-expires", type=int, help="longest registration granted")
    parser.add_argument("--default-expires", type=int, help="registration time when none asked")
    parser.add_argument(
        "--flow-timer", type=int, help="keep-alive interval asked of RFC 5626 clients (s)"
    )
    parser.add_argument("--ws-ping-interval", type=float, help="WebSocket ping interval (s)")
    parser.add_argument(
        "--ws-idle-timeout", type=float, help="close a WebSocket silent this long (s)"
    )
    parser.add_argument("--nonce-lifetime", type=int, help="digest nonce lifetime (s)")
    parser.add_argument(
        "--digest-algorithm", dest="digest_algorithms", action="append",
        choices=["MD5", "SHA-256"],
        help="digest algorithm offered, most preferred first (repeatable; default MD5 only)",
    )
    parser.add_argument("--auth-secret", help="nonce secret shared by the nodes of a cluster")
    parser.add_argument("--invite-timeout", type=float, help="seconds a call may ring (480)")
    parser.add_argument(
        "--max-calls-per-user", type=int, help="concurrent calls per user (0 = unlimited)"
    )
    parser.add_argument("--max-flows", type=int,
                        help="SIP flows (UDP peers, TCP/TLS, WebSockets) at once; then 503")
    parser.add_argument("--max-transactions", type=int,
                        help="SIP transactions in progress at once; then 503")
    parser.add_argument("--max-dialogs", type=int,
                        help="dialogs (calls, subscriptions) tracked at once; then 503")
    parser.add_argument("--max-media-sessions", type=int,
                        help="calls with anchored media at once; then 503")
    parser.add_argument("--max-contacts", type=int,
                        help="bindings kept per address-of-record; the oldest go first "
                        "(default 32)")
    parser.add_argument(
        "--stun-uri", dest="stun_uris", action="append", metavar="URI",
        help="STUN server for the web phone, e.g. stun:stun.example.org:3478 (repeatable)",
    )
    parser.add_argument(
        "--turn-uri", dest="turn_uris", action="append", metavar="URI",
        help="TURN server for the web phone, e.g. turn:turn.example.org:3478?transport=udp "
        "(repeatable; needs --turn-secret)",
    )
    parser.add_argument(
        "--turn-secret", help="coturn's static-auth-secret: the web phone gets time-limited "
        "TURN credentials (TURN REST API)",
    )
    parser.add_argument("--turn-ttl", type=int, help="lifetime of TURN credentials in seconds")
    parser.add_argument(
        "--max-connections-per-ip", type=int, metavar="N",
        help="WebSocket, SIP TCP and TLS connections one source IP may hold (default 100; "
        "0 = unlimited)",
    )
    parser.add_argument(
        "--unauthenticated-timeout", type=float, metavar="S",
        help="close a WebSocket with no authenticated request after S seconds (default 30; "
        "0 = never)",
    )
    parser.add_argument(
        "--http-header-timeout", type=float, metavar="S",
        help="close an HTTP connection that sent no complete request within S seconds, and an "
        "idle keep-alive one (default 10)",
    )
    parser.add_argument(
        "--max-requests-per-ip", type=int, metavar="N",
        help="SIP requests per source IP per --request-window; more are dropped (UDP) or "
        "answered 503 (default 100; 0 = unlimited)",
    )
    parser.add_argument(
        "--request-window", type=float, metavar="S",
        help="the window of --max-requests-per-ip in seconds (default 2)",
    )
    parser.add_argument(
        "--auth-failures-before-ban", type=int, metavar="N",
        help="ban a source IP after N authentication failures within --auth-failure-window "
        "(default 10; 0 = never)",
    )
    parser.add_argument(
        "--auth-failure-window", type=float, metavar="S",
        help="window for counting authentication failures in seconds (default 600)",
    )
    parser.add_argument(
        "--ban-time", type=float, metavar="S",
        help="how long a banned source IP is refused, on every node with --redis (default 600)",
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT",
        help="serve Prometheus /metrics on this separate listener, e.g. 127.0.0.1:9090 "
        "(default: not served)",
    )
    # [push]: RFC 8599 push notifications (each flag is the [push] key of the same name).
    parser.add_argument(
        "--push-wait", type=float, metavar="S",
        help="[push] wait: seconds a call for a sleeping mobile app waits for its REGISTER "
        "after the push, then 480 (default 20)",
    )
    parser.add_argument(
        "--push-repeat", type=float, metavar="S",
        help="[push] repeat: seconds between pushes while waiting (default 5)",
    )
    parser.add_argument(
        "--push-ca-file", metavar="FILE",
        help="[push] ca_file: CA bundle to verify push services with (default: the system's)",
    )
    parser.add_argument(
        "--push-apns-url", metavar="URL",
        help="[push] apns_url: APNs base URL (default https://api.push.apple.com; "
        "sandbox https://api.sandbox.push.apple.com)",
    )
    parser.add_argument(
        "--push-apns-key-file", metavar="FILE",
        help="[push] apns_key_file: the .p8 token-signing key from Apple; turns APNs "
        "(pn-provider=apns) on",
    )
    parser.add_argument("--push-apns-key-id", metavar="ID",
                        help="[push] apns_key_id: the key's 10-character id")
    parser.add_argument("--push-apns-team-id", metavar="ID",
                        help="[push] apns_team_id: the Apple developer team id")
    parser.add_argument(
        "--push-fcm-url", metavar="URL",
        help="[push] fcm_url: FCM HTTP v1 API base URL (default https://fcm.googleapis.com)",
    )
    parser.add_argument(
        "--push-fcm-service-account", metavar="FILE",
        help="[push] fcm_service_account: the Firebase service-account JSON key; turns FCM "
        "(pn-provider=fcm, Android) on",
    )
    parser.add_argument(
        "--push-webpush-vapid-key-file", metavar="FILE",
        help="[push] webpush_vapid_key_file: P-256 private key (PEM) signing Web Push (VAPID); "
        "turns Web Push (pn-provider=webpush, browsers) on; its public key is +sip.vapid",
    )
    parser.add_argument(
        "--push-webpush-subject", metavar="URI",
        help="[push] webpush_subject: mailto: or https: contact given to Web Push services",
    )
    parser.add_argument(
        "--drain-grace", type=float, metavar="S",
        help="on SIGTERM or `ws2sip drain`: /healthz answers 503 \"draining\" and new "
        "WebSockets and calls are refused; S seconds later (the load balancer has moved away) "
        "idle WebSockets are closed with 1001 (default 5)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, metavar="S",
        help="...then calls in progress may go on up to S seconds before they are cut and the "
        "node exits (default 60); SIGHUP reloads users file, trunks, certificates and limits",
    )
    parser.add_argument(
        "--node-heartbeat", type=float, metavar="S",
        help="seconds between this node's heartbeats in Redis; the bindings of a node silent for "
        "3 heartbeats are dropped by the others (default 5)",
    )
    parser.add_argument(
        "--redis-replica-acks", type=int, metavar="N",
        help="replicas that must hold each registration write (Redis WAIT, 1 s) before its "
        "200, else 503: with Sentinel, 1 makes a failover lose no registration (default 0; "
        "not with redis+cluster://)",
    )
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="text (default) or json: one object per line with time, level, "
                        "logger, message, node and, when known, call_id, user and flow")
    parser.add_argument(
        "--events-webhook", metavar="URL",
        help="POST each call event (start, answer, end with cause, duration and media "
        "stats) as JSON to this URL; bounded queue, bounded retries, never blocks calls",
    )
    parser.add_argument(
        "--events-stream", metavar="KEY",
        help="also XADD each call event to this Redis stream (needs --redis), e.g. ws2sip:cdr",
    )
    parser.add_argument("--events-stream-maxlen", type=int, metavar="N",
                        help="approximate bound of --events-stream (MAXLEN ~; default 100000)")
    parser.add_argument(
        "--admin-token", metavar="TOKEN",
        help="Bearer token that /admin/status (on the --metrics listener) accepts from other "
        "hosts; without it only loopback clients are answered",
    )
    parser.add_argument(
        "--no-demo-users", dest="demo_users", action="store_false", default=None,
        help="do not create alice and bob on first start with an empty user store",
    )
