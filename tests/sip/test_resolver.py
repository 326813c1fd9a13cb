"""RFC 3263 resolution against a real DNS server on loopback, plus literals and localhost."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator

import pytest

from sip.errors import SipError
from sip.resolver import Resolver, SrvRecord, Target, order_srv
from tests.sip.dns_responder import DnsResponder, Zone, start_dns_responder

ZONE: Zone = {
    # A domain with NAPTR → SRV → A/AAAA, preferring TCP, then TLS, then UDP.
    ("example.test", "NAPTR"): [
        '20 10 "s" "SIP+D2U" "" _sip._udp.example.test.',
        '10 20 "s" "SIPS+D2T" "" _sips._tcp.example.test.',
        '10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.',
        '5 10 "s" "SIP+D2W" "" _sip._ws.example.test.',
        '1 10 "u" "E2U+sip" "!^.*$!sip:info@example.test!" .',
    ],
    ("_sip._udp.example.test", "SRV"): ["10 0 5070 udp1.example.test."],
    ("_sip._tcp.example.test", "SRV"): [
        "20 0 5080 tcp-backup.example.test.",
        "10 0 5071 tcp1.example.test.",
    ],
    ("_sips._tcp.example.test", "SRV"): ["10 0 5061 tls1.example.test."],
    ("_sip._ws.example.test", "SRV"): ["10 0 8080 ws1.example.test."],
    ("udp1.example.test", "A"): ["192.0.2.1"],
    ("tcp1.example.test", "A"): ["192.0.2.2"],
    ("tcp1.example.test", "AAAA"): ["2001:db8::2"],
    ("tcp-backup.example.test", "A"): ["192.0.2.3"],
    ("tls1.example.test", "A"): ["192.0.2.4"],
    ("ws1.example.test", "A"): ["192.0.2.5"],
    # No NAPTR: SRV per transport.
    ("srvonly.test", "SOA"): ["ns.test. admin.test. 1 60 60 60 60"],
    ("_sip._udp.srvonly.test", "SRV"): ["10 0 5090 host.srvonly.test."],
    ("_sips._tcp.srvonly.test", "SRV"): ["10 0 5091 host.srvonly.test."],
    ("host.srvonly.test", "A"): ["198.51.100.7"],
    # No NAPTR, no SRV: plain address records.
    ("plain.test", "A"): ["203.0.113.9"],
    ("plain.test", "AAAA"): ["2001:db8::9"],
    # SRV saying "not available here".
    ("_sip._tcp.refused.test", "SRV"): ["0 0 0 ."],
    ("refused.test", "SOA"): ["ns.test. admin.test. 1 60 60 60 60"],
}


@pytest.fixture
async def responder() -> AsyncIterator[DnsResponder]:
    server = await start_dns_responder(ZONE)
    yield server
    server.close()


@pytest.fixture
def resolver(responder: DnsResponder) -> Resolver:
    return Resolver(nameservers=["127.0.0.1"], port=responder.port, timeout=2.0)


async def test_ipv4_literal_needs_no_dns() -> None:
    resolver = Resolver(nameservers=["127.0.0.1"], port=9, timeout=0.5)  # nothing listens there
    assert await resolver.resolve("192.0.2.1") == [Target("udp", "192.0.2.1", 5060)]
    assert await resolver.resolve("192.0.2.1", secure=True) == [Target("tls", "192.0.2.1", 5061)]
    assert await resolver.resolve("192.0.2.1", port=7000, transport="TCP") == [
        Target("tcp", "192.0.2.1", 7000)
    ]
    assert await resolver.resolve("192.0.2.1", transport="ws") == [Target("ws", "192.0.2.1", 5060)]


async def test_ipv6_literals_with_and_without_brackets() -> None:
    resolver = Resolver(nameservers=["127.0.0.1"], port=9, timeout=0.5)
    assert await resolver.resolve("[2001:DB8::1]") == [Target("udp", "2001:db8::1", 5060)]
    assert await resolver.resolve("::1", port=5080, transport="tcp") == [Target("tcp", "::1", 5080)]
    assert await resolver.resolve("[::1]", transport="tcp", secure=True) == [
        Target("tls", "::1", 5061)
    ]


async def test_unreachable_dns_server_falls_back_to_system_resolver() -> None:
    resolver = Resolver(nameservers=["127.0.0.1"], port=9, timeout=0.5)  # nothing listens there
    targets = await resolver.resolve(socket.gethostname(), port=5070, transport="udp")
    assert targets and all(t.port == 5070 and t.transport == "udp" for t in targets)


async def test_localhost_resolves_without_any_dns_server() -> None:
    resolver = Resolver(nameservers=["127.0.0.1"], port=9, timeout=0.5)
    targets = await resolver.resolve("localhost", transport="tcp")
    assert targets
    assert {target.host for target in targets} <= {"127.0.0.1", "::1"}
    assert all(target.transport == "tcp" and target.port == 5060 for target in targets)


async def test_etc_hosts_name_falls_back_to_system_resolver(resolver: Resolver) -> None:
    hostname = socket.gethostname()  # listed in /etc/hosts, unknown to the test DNS server
    system = {info[4][0] for info in socket.getaddrinfo(hostname, None)}
    targets = await resolver.resolve(hostname, port=5062)
    assert targets and {target.host for target in targets} == system
    assert all(target.port == 5062 and target.transport == "udp" for target in targets)


async def test_naptr_orders_by_order_then_preference_and_filters_supported(
    resolver: Resolver,
) -> None:
    targets = await resolver.resolve("example.test")
    assert targets == [
        Target("tcp", "192.0.2.2", 5071),
        Target("tcp", "2001:db8::2", 5071),
        Target("tcp", "192.0.2.3", 5080),
        Target("tls", "192.0.2.4", 5061),
        Target("udp", "192.0.2.1", 5070),
    ]


async def test_naptr_with_ws_supported_puts_ws_first(resolver: Resolver) -> None:
    targets = await resolver.resolve("example.test", supported=("ws", "udp"))
    assert targets == [Target("ws", "192.0.2.5", 8080), Target("udp", "192.0.2.1", 5070)]


async def test_naptr_secure_keeps_only_sips_services(resolver: Resolver) -> None:
    assert await resolver.resolve("example.test", secure=True) == [Target("tls", "192.0.2.4", 5061)]


async def test_srv_per_transport_when_no_naptr(resolver: Resolver) -> None:
    assert await resolver.resolve("srvonly.test") == [
        Target("udp", "198.51.100.7", 5090),
        Target("tls", "198.51.100.7", 5091),
    ]
    assert await resolver.resolve("srvonly.test", secure=True) == [
        Target("tls", "198.51.100.7", 5091)
    ]


async def test_explicit_transport_uses_its_srv_only(resolver: Resolver) -> None:
    assert await resolver.resolve("example.test", transport="udp") == [
        Target("udp", "192.0.2.1", 5070)
    ]
    assert await resolver.resolve("example.test", transport="tcp", secure=True) == [
        Target("tls", "192.0.2.4", 5061)
    ]


async def test_explicit_transport_without_srv_falls_back_to_addresses(resolver: Resolver) -> None:
    assert await resolver.resolve("plain.test", transport="tcp") == [
        Target("tcp", "203.0.113.9", 5060),
        Target("tcp", "2001:db8::9", 5060),
    ]


async def test_explicit_port_skips_naptr_and_srv(
    resolver: Resolver, responder: DnsResponder
) -> None:
    assert await resolver.resolve("tcp1.example.test", port=6000, transport="tcp") == [
        Target("tcp", "192.0.2.2", 6000),
        Target("tcp", "2001:db8::2", 6000),
    ]
    assert {rdtype for _, rdtype in responder.queries} == {"A", "AAAA"}


async def test_no_naptr_no_srv_uses_addresses_with_udp_or_tls(resolver: Resolver) -> None:
    assert await resolver.resolve("plain.test") == [
        Target("udp", "203.0.113.9", 5060),
        Target("udp", "2001:db8::9", 5060),
    ]
    assert await resolver.resolve("plain.test", secure=True) == [
        Target("tls", "203.0.113.9", 5061),
        Target("tls", "2001:db8::9", 5061),
    ]


async def test_unknown_name_raises_503(resolver: Resolver) -> None:
    with pytest.raises(SipError) as raised:
        await resolver.resolve("nowhere.invalid")
    assert raised.value.status == 503
    assert raised.value.reason == "DNS: no address for nowhere.invalid"


async def test_srv_dot_target_means_unavailable(resolver: Resolver) -> None:
    with pytest.raises(SipError) as raised:
        await resolver.resolve("refused.test", transport="tcp")
    assert raised.value.status == 503


async def test_unsupported_transport_is_rejected(resolver: Resolver) -> None:
    with pytest.raises(SipError) as raised:
        await resolver.resolve("example.test", transport="sctp")
    assert raised.value.status == 503


async def test_answers_are_cached_within_ttl(resolver: Resolver, responder: DnsResponder) -> None:
    first = await resolver.resolve("example.test")
    asked = len(responder.queries)
    assert asked > 0
    assert await resolver.resolve("example.test") == first
    assert len(responder.queries) == asked


async def test_cache_expires_after_capped_ttl(responder: DnsResponder) -> None:
    now = [0.0]
    resolver = Resolver(
        nameservers=["127.0.0.1"], port=responder.port, cache_ttl_cap=5, clock=lambda: now[0]
    )
    await resolver.resolve("plain.test", port=5060)
    asked = len(responder.queries)
    now[0] = 4.0
    await resolver.resolve("plain.test", port=5060)
    assert len(responder.queries) == asked
    now[0] = 6.0  # past the 5 s cap although the records carry a 60 s TTL
    await resolver.resolve("plain.test", port=5060)
    assert len(responder.queries) == asked + 2


def srv(priority: int, weight: int, name: str) -> SrvRecord:
    return SrvRecord(priority, weight, 5060, name)


def test_srv_priority_is_strict() -> None:
    records = [srv(20, 100, "late"), srv(10, 0, "early"), srv(10, 0, "early2"), srv(30, 1, "last")]
    for seed in range(50):
        ordered = [record.target for record in order_srv(records, random.Random(seed))]
        assert set(ordered[:2]) == {"early", "early2"}
        assert ordered[2:] == ["late", "last"]


def test_srv_weight_biases_selection() -> None:
    records = [srv(10, 1, "light"), srv(10, 99, "heavy")]
    rng = random.Random(1234)
    firsts: dict[str, int] = {"light": 0, "heavy": 0}
    for _ in range(1000):
        ordered = order_srv(records, rng)
        assert sorted(record.target for record in ordered) == ["heavy", "light"]
        firsts[ordered[0].target] += 1
    assert firsts["heavy"] > 900
    assert firsts["light"] > 0


async def test_no_dns_answer_at_all_still_resolves_system_names() -> None:
    server = await start_dns_responder({})
    try:
        resolver = Resolver(nameservers=["127.0.0.1"], port=server.port)
        targets = await resolver.resolve(socket.gethostname())
        assert targets and all(t.transport == "udp" and t.port == 5060 for t in targets)
    finally:
        server.close()
