"""The gateway's HTTP side as tests see it: its base URL, its metrics listener, and the live
bindings that /metrics counts (ws2sip_bindings)."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.fixtures.gateway import GatewayProcess


def gateway_http_url(gateway: GatewayProcess) -> str:
    """The gateway's HTTP base (WebSocket listener: /healthz, the web phone)."""
    return f"http://127.0.0.1:{gateway.ws_port}"


def gateway_metrics_url(gateway: GatewayProcess) -> str:
    """The gateway's metrics listener (--metrics, which the test fixture always sets)."""
    return f"http://127.0.0.1:{gateway.metrics_port}"


async def metric_value(metrics_base: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{metrics_base}/metrics") as reply:
        text = await reply.text()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match[1])


async def bindings_count(metrics_base: str) -> int:
    """The gateway's own count of live bindings (ws2sip_bindings on /metrics)."""
    return int(await metric_value(metrics_base, "ws2sip_bindings"))


async def wait_for_bindings(metrics_base: str, expected: int, timeout: float = 10.0) -> int:
    """Poll /metrics until it reports `expected` (work after a close is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await bindings_count(metrics_base)
    while count != expected and loop.time() < deadline:
        await asyncio.sleep(0.1)
        count = await bindings_count(metrics_base)
    return count
