"""`GET /admin/status` on the metrics listener (--metrics), and the `ws2sip status` command that
reads it: a node's flows, registrations, calls and limits at a glance.

Who may ask: clients on a loopback address, or anyone presenting `Authorization: Bearer
<admin_token>` when an admin token is configured. Anyone else gets 403. The metrics listener is
meant for the operator's network already; the token is for asking from another host.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

STATUS_PATH = "/admin/status"
FETCH_TIMEOUT = 10.0

StatusSource = Callable[[], Awaitable[dict[str, Any]]]


def status_handler(
    source: StatusSource, token: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if not _allowed(request, token):
            return web.json_response(
                {"error": "status is answered to loopback clients, or with the admin token"},
                status=403,
            )
        return web.json_response(await source())
    return handle


def _allowed(request: web.Request, token: str) -> bool:
    if token:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


async def fetch_status(url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(url, headers=headers) as response:
        body = await response.text()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {body[:200]}")
        status: dict[str, Any] = json.loads(body)
        return status


def format_status(status: dict[str, Any]) -> str:
    """The status as an operator reads it in a terminal."""
    flows = status["flows"]
    calls = status["calls"]
    lines = [
        f"node {status['node']}  domain {status['domain']}  up {status['uptime_seconds']:.0f} s"
        f"  store {status['store']}",
        "flows         " + _counts(flows["by_transport"], flows["total"]),
        f"registrations {status['registrations']['bindings']} bindings in the location "
        "service" + (" (all nodes)" if status["store"] != "memory" else ""),
        f"calls         {calls['dialogs']} dialogs, {calls['media_sessions']} with anchored "
        f"media, {calls['transactions']} transactions",
        "limits        " + ", ".join(f"{name} {value}"
                                     for name, value in status["limits"].items()),
    ]
    for sink, counts in status.get("call_events", {}).items():
        lines.append(f"call events   {sink}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def _counts(by_kind: dict[str, int], total: int) -> str:
    parts = ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items()))
    return f"{total}" + (f" ({parts})" if parts else "")
