"""The gateway's HTTP side as tests see it: its base URL and the live bindings /healthz counts."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.fixtures.gateway import GatewayProcess


def gateway_http_url(gateway: GatewayProcess) -> str:
    """The gateway's HTTP base (WebSocket listener: /healthz, /metrics, the web phone)."""
    return f"http://127.0.0.1:{gateway.ws_port}"


async def bindings_count(http_base: str) -> int:
    """The gateway's own count of live bindings (GET /healthz)."""
    async with aiohttp.ClientSession() as session, session.get(f"{http_base}/healthz") as reply:
        return (await reply.json())["bindings"]


async def wait_for_bindings(http_base: str, expected: int, timeout: float = 10.0) -> int:
    """Poll /healthz until it reports `expected` (work after a close is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = await bindings_count(http_base)
    while count != expected and loop.time() < deadline:
        await asyncio.sleep(0.1)
        count = await bindings_count(http_base)
    return count
