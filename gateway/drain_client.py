"""`ws2sip drain`: asks a running node, through its private metrics listener, to drain."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from sip.flow import WILDCARD_HOSTS, format_address

from .config import Config, parse_hostport

# Where a node takes drain requests: its private metrics listener, from loopback only.
DRAIN_PATH = "/admin/drain"

REQUEST_TIMEOUT = 10.0
POLL_SECONDS = 0.5
# --wait gives up this long after the node's own drain should have ended.
WAIT_MARGIN_SECONDS = 30.0


def admin_url(config: Config) -> str:
    """The metrics listener's base URL, a wildcard host reached on loopback."""
    host, port = parse_hostport(config.metrics, "metrics")
    if host in WILDCARD_HOSTS:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://{format_address((host, port))}"


async def drain_node(config: Config, *, wait: bool) -> int:
    if not config.metrics:
        print("ws2sip drain: the node's metrics listener is needed (--metrics HOST:PORT, or "
              "`metrics` in --config); or send the node SIGTERM", file=sys.stderr)
        return 2
    base = admin_url(config)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(f"{base}{DRAIN_PATH}") as reply:
                answer = await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            print(f"ws2sip drain: no node answers at {base}: {error}", file=sys.stderr)
            return 1
        print(f"node {answer.get('node')} draining: idle WebSockets close in "
              f"{answer.get('drain_grace')}s, calls may go on {answer.get('drain_timeout')}s")
        if not wait:
            return 0
        limit = config.drain_grace + config.drain_timeout + WAIT_MARGIN_SECONDS
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            try:
                async with session.get(f"{base}/healthz") as reply:
                    await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                print("node stopped")
                return 0
            await asyncio.sleep(POLL_SECONDS)
    print(f"ws2sip drain: the node still answers after {limit:g}s", file=sys.stderr)
    return 1
