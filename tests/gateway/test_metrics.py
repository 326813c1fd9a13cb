"""/metrics reflects what the node is doing, and only on its own listener (--metrics): the
public HTTP listener serves neither it nor more than liveness on /healthz."""

from __future__ import annotations

import re

import aiohttp

from tests.fixtures.gateway import GatewayProcess
from tests.support.healthz import gateway_http_url, gateway_metrics_url

OPTIONS = (
    "OPTIONS sip:{domain} SIP/2.0\r\n"
    "Via: SIP/2.0/WS m3tr1cs.invalid;branch=z9hG4bKmetrics1\r\n"
    "Max-Forwards: 70\r\nTo: <sip:{domain}>\r\nFrom: <sip:probe@{domain}>;tag=m1\r\n"
    "Call-ID: metrics-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match[1])


async def test_metrics_count_flows_and_requests(gateway: GatewayProcess) -> None:
    base = gateway_metrics_url(gateway)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 200
            before = await response.text()
        async with session.ws_connect(gateway.ws_url, protocols=("sip",)) as ws:
            await ws.send_str(OPTIONS.format(domain=gateway.domain))
            reply = await ws.receive_str(timeout=5)
            assert reply.startswith("SIP/2.0 200")
            async with session.get(f"{base}/metrics") as response:
                during = await response.text()
    assert metric(during, "ws2sip_flows") == metric(before, "ws2sip_flows") + 1
    assert metric(during, 'ws2sip_sip_requests_total{method="OPTIONS"}') == 1
    assert metric(during, "ws2sip_bindings") == 0
    for name in ("ws2sip_connections_refused_total", "ws2sip_unauthenticated_closed_total",
                 "ws2sip_requests_rate_limited_total", "ws2sip_auth_failures_total",
                 "ws2sip_bans_total", "ws2sip_banned_sources"):
        assert metric(during, name) == 0


async def test_public_listener_serves_no_metrics_and_a_minimal_healthz(
    gateway: GatewayProcess,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway_http_url(gateway)}/metrics") as response:
            assert response.status == 404
        async with session.get(f"{gateway_http_url(gateway)}/healthz") as response:
            assert response.status == 200
            health = await response.json()
    assert health["status"] == "ok"
    assert set(health) == {"status", "node"}  # no counts: those are for /metrics
