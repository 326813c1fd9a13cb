"""RFC 3263 "Locating SIP Servers": NAPTR → SRV → A/AAAA, with dnspython and a small cache.

Names DNS cannot answer (localhost, /etc/hosts entries, or no DNS server at all) fall back to
the system resolver via getaddrinfo.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from sip.errors import SipError

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_SECURE_TRANSPORTS = frozenset({"tls", "wss"})
# RFC 3263 §4.1 and RFC 7118 §7 NAPTR services.
_TRANSPORT_BY_NAPTR_SERVICE = {
    "SIP+D2U": "udp",
    "SIP+D2T": "tcp",
    "SIPS+D2T": "tls",
    "SIP+D2W": "ws",
    "SIPS+D2W": "wss",
}
_SRV_PREFIX_BY_TRANSPORT = {
    "udp": "_sip._udp",
    "tcp": "_sip._tcp",
    "tls": "_sips._tcp",
    "ws": "_sip._ws",
    "wss": "_sips._ws",
}
# Answers DNS says do not exist are remembered this long at most (it may be lowered by the cap).
_NEGATIVE_TTL_S = 30.0
# Bounds the cache's memory; a SIP node talks to few domains, so eviction is rare.
_CACHE_MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Target:
    transport: str  # "udp" | "tcp" | "tls" | "ws" | "wss"
    host: str  # IP literal (v6 without brackets)
    port: int


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def default_port(transport: str) -> int:
    return 5061 if transport in _SECURE_TRANSPORTS else 5060


def _ip_literal(host: str) -> str | None:
    """The address text of an IP literal host (brackets stripped), else None."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _is_localhost(host: str) -> bool:
    """RFC 6761 §6.3: localhost names never go to DNS."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random selection within a priority."""
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        group = [record for record in records if record.priority == priority]
        # RFC 2782 puts zero-weight records first so they keep a small chance of being picked;
        # shuffling them keeps that chance fair among themselves.
        zero_weight = [record for record in group if record.weight == 0]
        rng.shuffle(zero_weight)
        remaining = zero_weight + [record for record in group if record.weight > 0]
        while remaining:
            threshold = rng.randint(0, sum(record.weight for record in remaining))
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= threshold:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


class Resolver:
    """Resolves a SIP URI's host part to an ordered list of transport/address/port targets."""

    def __init__(
        self,
        *,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        cache_ttl_cap: float = 300,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dns: dns.asyncresolver.Resolver | None
        if nameservers is None:
            try:
                self._dns = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self._dns = None  # no DNS server configured: the system resolver still works
        else:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = list(nameservers)
        if self._dns is not None:
            self._dns.port = port
            self._dns.lifetime = timeout
            self._dns.timeout = timeout
        self._cache_ttl_cap = cache_ttl_cap
        self._rng = rng or random.Random()
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[Any]]] = {}

    async def resolve(
        self,
        host: str,
        *,
        port: int | None = None,
        transport: str | None = None,
        secure: bool = False,
        supported: tuple[str, ...] = ("udp", "tcp", "tls"),
    ) -> list[Target]:
        """Ordered targets to try for host (RFC 3263 §4); SipError(503) when there are none."""
        if not host:
            raise SipError(503, "DNS: no address for an empty host")
        if transport is not None:
            transport = transport.lower()
            if transport not in TRANSPORTS:
                raise SipError(503, f"DNS: unsupported transport {transport!r} for {host}")
            if secure:  # a sips URI over tcp/ws means TLS underneath (RFC 3261 §26.2.2)
                transport = {"tcp": "tls", "udp": "tls", "ws": "wss"}.get(transport, transport)
        literal = _ip_literal(host)
        if literal is not None:
            chosen = transport or ("tls" if secure else "udp")
            return [Target(chosen, literal, port or default_port(chosen))]
        if port is not None or _is_localhost(host):
            chosen = transport or ("tls" if secure else "udp")
            targets = await self._address_targets(host, chosen, port or default_port(chosen))
        elif transport is not None:
            targets = await self._srv_targets(host, transport)
            if not targets:
                targets = await self._address_targets(host, transport, default_port(transport))
        else:
            targets = await self._locate_without_hints(host, secure, supported)
        if not targets:
            raise SipError(503, f"DNS: no address for {host}")
        return targets

    async def _locate_without_hints(
        self, host: str, secure: bool, supported: tuple[str, ...]
    ) -> list[Target]:
        usable = [t for t in supported if not secure or t in _SECURE_TRANSPORTS]
        targets: list[Target] = []
        for srv_name, transport in await self._naptr_services(host, usable):
            targets.extend(await self._srv_targets_by_name(srv_name, transport))
        if targets:
            return targets
        per_transport = await asyncio.gather(
            *(self._srv_targets(host, transport) for transport in usable)
        )
        targets = [target for found in per_transport for target in found]
        if targets:
            return targets
        fallback = "tls" if secure else "udp"
        return await self._address_targets(host, fallback, default_port(fallback))

    async def _naptr_services(self, host: str, usable: list[str]) -> list[tuple[str, str]]:
        """(SRV name, transport) pairs of the host's SIP NAPTR records, in order/preference."""
        records = await self._query(host, "NAPTR")
        candidates = []
        for record in records:
            service = record.service.decode("ascii", "replace").upper()
            transport = _TRANSPORT_BY_NAPTR_SERVICE.get(service)
            if record.flags.lower() != b"s" or transport not in usable:
                continue
            srv_name = record.replacement.to_text(omit_final_dot=True)
            candidates.append((record.order, record.preference, srv_name, transport))
        candidates.sort(key=lambda candidate: (candidate[0], candidate[1]))
        return [(srv_name, transport) for _, _, srv_name, transport in candidates]

    async def _srv_targets(self, host: str, transport: str) -> list[Target]:
        name = f"{_SRV_PREFIX_BY_TRANSPORT[transport]}.{host.rstrip('.')}"
        return await self._srv_targets_by_name(name, transport)

    async def _srv_targets_by_name(self, name: str, transport: str) -> list[Target]:
        records = [
            SrvRecord(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in await self._query(name, "SRV")
        ]
        # A target of "." means the service is decidedly not available at this domain.
        available = [record for record in records if record.target not in ("", ".")]
        targets: list[Target] = []
        for record in order_srv(available, self._rng):
            targets.extend(await self._address_targets(record.target, transport, record.port))
        return targets

    async def _address_targets(self, host: str, transport: str, port: int) -> list[Target]:
        return [Target(transport, address, port) for address in await self._addresses(host)]

    async def _addresses(self, host: str) -> list[str]:
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        if not _is_localhost(host):
            # IPv4 first: it is the family SIP peers are most often reachable on.
            v4, v6 = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
            addresses = [record.address for record in (*v4, *v6)]
            if addresses:
                return addresses
        return await self._system_addresses(host)

    async def _system_addresses(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            return []
        addresses: list[str] = []
        for _family, _type, _proto, _canonname, sockaddr in infos:
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        """Records of one type, cached up to their TTL (capped); [] for any DNS failure."""
        if self._dns is None:
            return []
        key = (name.lower().rstrip("."), rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            qname = dns.name.from_text(key[0])
            answer = await self._dns.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._remember(key, [], min(_NEGATIVE_TTL_S, self._cache_ttl_cap), now)
            return []
        except dns.exception.DNSException:
            return []  # timeouts and server failures are not remembered: the next try may work
        if answer.rrset is None:
            self._remember(key, [], min(_NEGATIVE_TTL_S, self._cache_ttl_cap), now)
            return []
        records = list(answer.rrset)
        self._remember(key, records, min(float(answer.rrset.ttl), self._cache_ttl_cap), now)
        return records

    def _remember(self, key: tuple[str, str], records: list[Any], ttl: float, now: float) -> None:
        if ttl <= 0:
            return
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            for expired_key in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[expired_key]
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                del self._cache[next(iter(self._cache))]  # the oldest insertion
        self._cache[key] = (now + ttl, records)
