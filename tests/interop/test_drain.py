"""Graceful drain of a real gateway process (gateway/lifecycle.py): SIGTERM and `ws2sip drain`.

The node turns /healthz unhealthy, refuses new WebSockets and new INVITEs (503 + Retry-After),
closes idle WebSockets with 1001, lets the running call finish, then exits 0; a call that
outlives drain_timeout is cut."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys

import aiohttp
import pytest

from gateway.lifecycle import is_loopback
from tests.fixtures.gateway import REPO_ROOT, GatewayFactory, GatewayProcess
from tests.support.healthz import gateway_http_url
from tests.support.ws_sip import WsSipUa, browser_sdp

DOMAIN = "example.com"
EXIT_WAIT = 20.0


async def connect(gateway: GatewayProcess, user: str, password: str) -> WsSipUa:
    client = await WsSipUa.connect(gateway.ws_url, user, password, domain=DOMAIN)
    assert (await client.register()).status == 200
    return client


async def health(gateway: GatewayProcess) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{gateway_http_url(gateway)}/healthz") as reply:
        return reply.status, await reply.json()


async def wait_for_health(gateway: GatewayProcess, status: int, timeout: float = 10.0
                          ) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, body = await health(gateway)
        if code == status or loop.time() > deadline:
            assert code == status, body
            return body
        await asyncio.sleep(0.05)


async def close_code(client: WsSipUa, timeout: float = 10.0) -> int | None:
    frame = await client.receive_frame(timeout)
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), frame
    return client.ws.close_code


async def exit_code(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return await asyncio.wait_for(gateway.process.wait(), EXIT_WAIT)


@pytest.fixture
def users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(9) for name in ("alice", "bob", "carol")}


async def test_sigterm_drains_a_node_without_cutting_its_call(
    gateway_factory: GatewayFactory, users: dict[str, str],
) -> None:
    gateway = await gateway_factory(users=users, domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--drain-grace", "1", "--drain-timeout", "30"])
    alice, bob, carol = [await connect(gateway, name, users[name]) for name in users]
    try:
        calling = asyncio.create_task(alice.call("bob", browser_sdp("actpass")))
        _, bob_dialog = await bob.answer(browser_sdp("active"))
        final, alice_dialog = await calling
        assert final.status == 200 and alice_dialog is not None

        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        body = await wait_for_health(gateway, 503)
        assert body["status"] == "draining"
        # No new WebSocket: the balancer's retry takes the client to another node.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WsSipUa.connect(gateway.ws_url, "carol", users["carol"], domain=DOMAIN)
        assert refused.value.status == 503
        # No new call, on a connection that is still open: 503 with Retry-After.
        refusal, _ = await bob.call("carol", browser_sdp("actpass"))
        assert refusal.status == 503 and refusal.get("retry-after") is not None
        # carol has no call: closed with 1001 once the grace is over, to reconnect elsewhere.
        assert await close_code(carol) == aiohttp.WSCloseCode.GOING_AWAY

        # The call outlives the grace, and its BYE still passes.
        await asyncio.sleep(1.0)
        assert gateway.returncode is None
        assert (await bob.hang_up(bob_dialog)).status == 200
        # Its WebSockets are idle now: closed with 1001, and the node exits 0.
        assert await close_code(alice) == aiohttp.WSCloseCode.GOING_AWAY
        assert await close_code(bob) == aiohttp.WSCloseCode.GOING_AWAY
        assert await exit_code(gateway) == 0
    finally:
        for client in (alice, bob, carol):
            await client.close()
    log = gateway.log_text()
    assert "drained: no calls and no WebSockets left" in log
    assert "cutting" not in log


async def test_drain_command_cuts_a_call_longer_than_the_deadline(
    gateway_factory: GatewayFactory, users: dict[str, str],
) -> None:
    gateway = await gateway_factory(users=users, domain=DOMAIN, transports=("udp", "ws"),
                                    extra_args=["--drain-grace", "0", "--drain-timeout", "1"])
    alice, bob = [await connect(gateway, name, users[name]) for name in ("alice", "bob")]
    try:
        calling = asyncio.create_task(alice.call("bob", browser_sdp("actpass")))
        await bob.answer(browser_sdp("active"))
        assert (await calling)[0].status == 200
        drain = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "drain", "--metrics",
            f"127.0.0.1:{gateway.metrics_port}", "--wait", cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(drain.communicate(), EXIT_WAIT)
        assert drain.returncode == 0, output.decode()
        assert b"draining" in output and b"node stopped" in output
        assert await close_code(alice) == aiohttp.WSCloseCode.GOING_AWAY
        assert await exit_code(gateway) == 0
    finally:
        await alice.close()
        await bob.close()
    assert "drain_timeout 1s reached: cutting 1 call(s)" in gateway.log_text()


@pytest.mark.parametrize(("peer", "local"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("10.0.0.1", False),
    ("2001:db8::1", False), (None, False), ("not an address", False),
])
def test_only_the_nodes_own_host_may_ask_for_a_drain(peer: str | None, local: bool) -> None:
    assert is_loopback(peer) is local
