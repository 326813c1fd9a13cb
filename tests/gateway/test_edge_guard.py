"""What one source address may cost the gateway (gateway/edge_guard.py), against the real
gateway on loopback: 127.0.0.0/8 gives each test its own source IPs (127.0.0.2, .3, ...), so
the limits hit one address and the tests show that another one is untouched.

Counts are bounded (a cap of 20, 30 tries) and so are times (deadlines of about a second, set
through the gateway's flags).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket

import aiohttp
import pytest

from sip.digest import DigestChallenge, build_authorization, parse_challenge
from tests.fixtures.gateway import GatewayFactory, GatewayProcess
from tests.gateway.ws_edge import options_request
from tests.support.healthz import gateway_metrics_url, metric_value
from tests.support.ws_sip import WsSipUa

SETTLE = 0.5  # seconds for the gateway to finish work a test cannot observe directly


def udp_options(domain: str, source: tuple[str, int], call_id: str) -> bytes:
    host, port = source
    return (
        f"OPTIONS sip:{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{domain}>\r\nFrom: <sip:probe@{domain}>;tag=g1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def udp_socket(source_ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    return sock


async def udp_responses(sock: socket.socket, wait: float) -> list[bytes]:
    """Every datagram that arrives within `wait` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    received = []
    while (left := deadline - loop.time()) > 0:
        try:
            received.append(await asyncio.wait_for(loop.sock_recv(sock, 65535), left))
        except TimeoutError:
            break
    return received


async def ws_from(gateway: GatewayProcess, source_ip: str, user: str = "",
                  password: str = "") -> WsSipUa:
    """A WebSocket UA whose connection comes from source_ip."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    session = aiohttp.ClientSession(connector=connector)
    try:
        ws = await session.ws_connect(gateway.ws_url, protocols=("sip",))
    except BaseException:
        await session.close()
        raise
    return WsSipUa(session, ws, user, password, gateway.domain)


async def log_lines(gateway: GatewayProcess, pattern: str) -> list[str]:
    await asyncio.sleep(SETTLE)  # the gateway's output reaches its log through a pipe
    return re.findall(pattern, gateway.log_text())


async def test_websockets_per_ip_are_capped(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(transports=("ws",),
                                    extra_args=["--max-connections-per-ip", "20"])
    opened: list[WsSipUa] = []
    refused: list[int] = []
    try:
        for _ in range(30):
            try:
                opened.append(await ws_from(gateway, "127.0.0.2"))
            except aiohttp.WSServerHandshakeError as error:
                refused.append(error.status)
        assert len(opened) == 20
        assert refused == [429] * 10
        # Another address is not affected; a closed connection frees its place.
        other = await ws_from(gateway, "127.0.0.3")
        await other.close()
        await opened.pop().close()
        await asyncio.sleep(SETTLE)
        opened.append(await ws_from(gateway, "127.0.0.2"))
    finally:
        for ua in opened:
            await ua.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_connections_refused_total") == 10
    assert len(await log_lines(gateway, r"127\.0\.0\.2 holds 20 connections")) == 1


async def test_sip_tcp_connections_count_toward_the_same_cap(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(transports=("tcp", "ws"),
                                    extra_args=["--max-connections-per-ip", "5"])
    loop = asyncio.get_running_loop()
    ws = await ws_from(gateway, "127.0.0.2")
    streams: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=5,
                                            source_address=("127.0.0.2", 0))
            sock.setblocking(False)
            streams.append(sock)
        # 1 WebSocket + 4 TCP fill the cap: the other 4 TCP connections are closed at once.
        closed = []
        for sock in streams:
            await loop.sock_sendall(sock, b"\r\n\r\n")  # RFC 5626 keep-alive: a pong if open
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 64), 2.0)
            except ConnectionResetError:
                reply = b""
            closed.append(reply == b"")
        assert closed == [False] * 4 + [True] * 4
        other = socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=5,
                                         source_address=("127.0.0.3", 0))
        other.setblocking(False)
        await loop.sock_sendall(other, b"\r\n\r\n")
        assert await asyncio.wait_for(loop.sock_recv(other, 64), 2.0) == b"\r\n"
        other.close()
    finally:
        for sock in streams:
            sock.close()
        await ws.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_connections_refused_total") == 4


async def test_unauthenticated_websocket_is_closed_at_the_deadline(
    gateway_factory: GatewayFactory,
) -> None:
    password = secrets.token_urlsafe(12)
    gateway = await gateway_factory(users={"alice": password}, transports=("ws",),
                                    extra_args=["--unauthenticated-timeout", "1"])
    stranger = await ws_from(gateway, "127.0.0.2")
    silent = await ws_from(gateway, "127.0.0.2")
    alice = await ws_from(gateway, "127.0.0.2", "alice", password)
    try:
        # The stranger is answered (OPTIONS needs no credentials) but never authenticates.
        await stranger.send_text(options_request("s1"))
        assert (await stranger.response()).status == 200
        assert (await alice.register()).status == 200
        for unauthenticated in (stranger, silent):
            closing = await unauthenticated.receive_frame(timeout=3.0)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # Past the deadline, the authenticated connection still works.
        await asyncio.sleep(1.0)
        await alice.send_text(options_request("a1"))
        assert (await alice.response()).status == 200
    finally:
        for ua in (stranger, silent, alice):
            await ua.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_unauthenticated_closed_total") == 2
    assert len(await log_lines(gateway, r"from 127\.0\.0\.2: no authenticated request")) == 1


def tcp_register(domain: str, sock: socket.socket, call_id: str, authorization: str = "") -> bytes:
    host, port = sock.getsockname()
    return (
        f"REGISTER sip:{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:alice@{domain}>\r\nFrom: <sip:alice@{domain}>;tag=r1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {2 if authorization else 1} REGISTER\r\n"
        f"Contact: <sip:alice@{host}:{port};transport=tcp>\r\nExpires: 300\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "Content-Length: 0\r\n\r\n"
    ).encode()


async def tcp_response(sock: socket.socket) -> str:
    """One response off a SIP TCP connection (no body), or "" once the gateway closed it."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65535), 3.0)
        if not chunk:
            return ""
        data += chunk
    return data.decode()


async def test_unauthenticated_sip_tcp_connection_is_closed_at_the_deadline(
    gateway_factory: GatewayFactory,
) -> None:
    """As for WebSockets: a SIP TCP connection must authenticate within the deadline, or it is
    closed, however much it pings; one that registered with digest stays."""
    password = secrets.token_urlsafe(12)
    gateway = await gateway_factory(users={"alice": password}, transports=("tcp",),
                                    extra_args=["--unauthenticated-timeout", "1"])
    loop = asyncio.get_running_loop()
    streams = [socket.create_connection(("127.0.0.1", gateway.tcp_port), timeout=5,
                                        source_address=("127.0.0.2", 0)) for _ in range(2)]
    silent, alice = streams
    try:
        for sock in streams:
            sock.setblocking(False)
        await loop.sock_sendall(alice, tcp_register(gateway.domain, alice, "tcp-reg"))
        found = re.search(r"WWW-Authenticate: (.*)\r\n", await tcp_response(alice))
        assert found is not None
        challenge = parse_challenge(found.group(1))
        authorization = build_authorization(
            challenge, method="REGISTER", uri=f"sip:{gateway.domain}", username="alice",
            password=password, nc=1, cnonce="0a1b2c3d")
        await loop.sock_sendall(alice, tcp_register(gateway.domain, alice, "tcp-reg",
                                                    authorization))
        assert (await tcp_response(alice)).startswith("SIP/2.0 200 ")
        await asyncio.sleep(1.5)
        await loop.sock_sendall(silent, b"\r\n\r\n")  # a ping does not count
        assert await tcp_response(silent) == ""
        await loop.sock_sendall(alice, b"\r\n\r\n")  # RFC 5626 keep-alive: still answered
        assert await asyncio.wait_for(loop.sock_recv(alice, 64), 2.0) == b"\r\n"
    finally:
        for sock in streams:
            sock.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_unauthenticated_closed_total") == 1


async def test_half_sent_http_request_is_closed(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(transports=("ws",), extra_args=["--http-header-timeout", "1"])
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", gateway.ws_port), timeout=5) as sock:
        sock.setblocking(False)
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = loop.time()
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 5.0) == b""
        assert loop.time() - started < 3.0


async def test_requests_per_ip_are_limited(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(
        transports=("udp", "ws"),
        extra_args=["--max-requests-per-ip", "20", "--request-window", "10"],
    )
    # UDP: 20 answered, the other 10 dropped (no 503 toward a possibly spoofed source).
    sock = udp_socket("127.0.0.2")
    try:
        source = sock.getsockname()
        for number in range(30):
            sock.sendto(udp_options(gateway.domain, source, f"u{number}"),
                        ("127.0.0.1", gateway.udp_port))
        answers = await udp_responses(sock, 2.0)
    finally:
        sock.close()
    assert len(answers) == 20 and all(a.startswith(b"SIP/2.0 200") for a in answers)
    # A connection (its source is proven): the 10 over the limit are answered 503.
    ua = await ws_from(gateway, "127.0.0.3")
    try:
        for number in range(30):
            await ua.send_text(options_request(f"w{number}"))
        responses = [await ua.response() for _ in range(30)]
    finally:
        await ua.close()
    assert [r.status for r in responses].count(200) == 20
    refusals = [r for r in responses if r.status == 503]
    assert len(refusals) == 10 and all(r.get("retry-after") == "10" for r in refusals)
    # Another address is not affected.
    other = udp_socket("127.0.0.4")
    try:
        other.sendto(udp_options(gateway.domain, other.getsockname(), "o1"),
                     ("127.0.0.1", gateway.udp_port))
        assert len(await udp_responses(other, 1.0)) == 1
    finally:
        other.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_requests_rate_limited_total") == 20
    assert len(await log_lines(gateway, r"sends over 20 requests per 10 s")) == 2


async def fail_to_register(gateway: GatewayProcess, source_ip: str, times: int) -> None:
    ua = await ws_from(gateway, source_ip, "alice", "wrong")
    try:
        for _ in range(times):
            assert (await ua.register()).status == 401
    finally:
        await ua.close()


async def settings_status(gateway: GatewayProcess, source_ip: str, user: str,
                          password: str) -> int:
    """The status of /config.json with a digest for user/password, fetched from source_ip."""
    url = f"http://127.0.0.1:{gateway.ws_port}/config.json"
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as reply:
            fields = (await reply.json())["turn_challenge"]
        challenge = DigestChallenge(
            realm=fields["realm"], nonce=fields["nonce"], algorithm=fields["algorithm"],
            qop_options=("auth",), opaque=fields["opaque"], stale=False)
        authorization = build_authorization(challenge, method="GET", uri="/config.json",
                                            username=user, password=password)
        async with session.get(url, headers={"Authorization": authorization}) as reply:
            return reply.status


async def test_repeated_auth_failures_ban_the_address(gateway_factory: GatewayFactory) -> None:
    password = secrets.token_urlsafe(12)
    gateway = await gateway_factory(
        users={"alice": password}, transports=("udp", "ws"),
        extra_args=["--auth-failures-before-ban", "3", "--ban-time", "30",
                    "--turn-uri", "turn:127.0.0.1:3478", "--turn-secret", "s"],
    )
    # Two wrong SIP passwords and one wrong web phone password (/config.json digest).
    await fail_to_register(gateway, "127.0.0.2", 2)
    assert await settings_status(gateway, "127.0.0.2", "alice", "wrong") == 403
    await asyncio.sleep(SETTLE)
    # Banned: WebSockets refused, UDP requests dropped, even with the right password.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_from(gateway, "127.0.0.2", "alice", password)
    assert refused.value.status == 403
    sock = udp_socket("127.0.0.2")
    try:
        sock.sendto(udp_options(gateway.domain, sock.getsockname(), "b1"),
                    ("127.0.0.1", gateway.udp_port))
        assert await udp_responses(sock, 1.0) == []
    finally:
        sock.close()
    assert await settings_status(gateway, "127.0.0.2", "alice", password) == 403
    assert await settings_status(gateway, "127.0.0.3", "alice", password) == 200
    # Another address signs in as usual.
    alice = await ws_from(gateway, "127.0.0.3", "alice", password)
    try:
        assert (await alice.register()).status == 200
    finally:
        await alice.close()
    metrics = gateway_metrics_url(gateway)
    assert await metric_value(metrics, "ws2sip_auth_failures_total") == 3
    assert await metric_value(metrics, "ws2sip_bans_total") == 1
    assert await metric_value(metrics, "ws2sip_banned_sources") == 1
    assert len(await log_lines(gateway, r"127\.0\.0\.2 banned for 30 s")) == 1


async def test_a_ban_reaches_every_node_through_redis(
    gateway_factory: GatewayFactory, redis_url: str,
) -> None:
    password = secrets.token_urlsafe(12)
    options = ["--auth-failures-before-ban", "3", "--ban-time", "30"]
    first = await gateway_factory(users={"alice": password}, transports=("ws",),
                                  redis_url=redis_url, node_id="guard-a", extra_args=options)
    second = await gateway_factory(transports=("ws",), redis_url=redis_url, node_id="guard-b",
                                   extra_args=options)
    # Two failures on the first node and one on the second: the count is shared, so the
    # third bans on the second node, and the first node applies the ban.
    await fail_to_register(first, "127.0.0.5", 2)
    await fail_to_register(second, "127.0.0.5", 1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        try:
            ua = await ws_from(first, "127.0.0.5", "alice", password)
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 403
            break
        await ua.close()
        assert loop.time() < deadline, "the first node never applied the second node's ban"
        await asyncio.sleep(0.1)
    assert await metric_value(gateway_metrics_url(second), "ws2sip_bans_total") == 1
    assert await metric_value(gateway_metrics_url(first), "ws2sip_banned_sources") == 1


def test_trunks_are_exempt_by_the_same_rule_as_trunk_trust() -> None:
    # trusted_sources may name a transport, a port or a CIDR range (gateway.config.TrustedSource);
    # the per-IP limits must exempt the same addresses, whatever the form.
    from gateway.config import Config, Trunk
    from gateway.edge_guard import GuardPolicy

    trunk = Trunk("pbx", "10.0.0.20:5060",
                  trusted_sources=("udp:10.0.0.20:5060", "192.0.2.0/24", "198.51.100.7"))
    policy = GuardPolicy.from_config(Config(trunks=(trunk,)))
    for ip in ("10.0.0.20", "192.0.2.99", "198.51.100.7"):
        assert policy.is_exempt(ip), ip
    for ip in ("10.0.0.21", "198.51.100.8", "not-an-address"):
        assert not policy.is_exempt(ip), ip
