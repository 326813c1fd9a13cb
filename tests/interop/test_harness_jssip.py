"""The JsSIP agent harness: a real node process running JsSIP over the `ws` package.

The gateway is not involved; a few lines of aiohttp stand in for a SIP server that answers every
request with one fixed status, which is enough to see JsSIP's requests go out and its outcome
events come back with the right codes.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web

from tests.support.jssip import JsSipAgent
from tests.support.pjsua_control import AgentError

DIALOG_HEADERS = ("via", "from", "to", "call-id", "cseq")


def closed_loopback_port() -> int:
    """A port nothing listens on: bound then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answer(request: str, status: int, reason: str) -> str:
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    copied = [line for line in head[1:] if line.split(":", 1)[0].strip().lower() in DIALOG_HEADERS]
    return "\r\n".join([f"SIP/2.0 {status} {reason}", *copied, "Content-Length: 0", "", ""])


@pytest.fixture
async def fixed_status_sip_server() -> AsyncIterator[tuple[str, list[str], dict[str, int]]]:
    """ws URL, the requests received, and the status to answer per method (mutable)."""
    received: list[str] = []
    status_by_method = {"REGISTER": 403, "MESSAGE": 202}

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse(protocols=("sip",))
        await socket_.prepare(request)
        async for message in socket_:
            if message.type is not WSMsgType.TEXT:
                continue
            received.append(message.data)
            method = message.data.split(" ", 1)[0]
            await socket_.send_str(answer(message.data, status_by_method.get(method, 501), "X"))
        return socket_

    app = web.Application()
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"ws://127.0.0.1:{port}/ws", received, status_by_method
    finally:
        await runner.cleanup()


async def test_register_against_closed_port_reports_transport_error() -> None:
    agent = await JsSipAgent.start("closed-port")
    try:
        outcome = await agent.register(
            f"ws://127.0.0.1:{closed_loopback_port()}/ws", "sip:alice@example.test", "secret"
        )
        assert outcome["outcome"] == "transportError"
        disconnected = await agent.wait_for("disconnected")
        assert disconnected["error"] is True
        assert agent.unclaimed_events("registered") == []
    finally:
        await agent.stop()


async def test_rejected_register_and_accepted_message_report_their_status(
    fixed_status_sip_server: tuple[str, list[str], dict[str, int]],
) -> None:
    ws_url, received, _ = fixed_status_sip_server
    agent = await JsSipAgent.start("fixed-status")
    try:
        outcome = await agent.register(ws_url, "sip:alice@example.test", "secret",
                                       instance_id="8f1fa16a-1165-4a96-8341-785b1ef24f12")
        assert outcome["outcome"] == "registrationFailed"
        assert outcome["status"] == 403
        register = received[0]
        assert register.startswith("REGISTER sip:example.test SIP/2.0")
        assert "+sip.instance=\"<urn:uuid:8f1fa16a-1165-4a96-8341-785b1ef24f12>\"" in register

        sent = await agent.send_message("sip:bob@example.test", "hello bob")
        assert (sent["outcome"], sent["status"]) == ("succeeded", 202)
        message = received[-1]
        assert message.startswith("MESSAGE sip:bob@example.test SIP/2.0")
        assert message.endswith("hello bob")
    finally:
        await agent.stop()


async def test_commands_before_start_are_refused_with_context() -> None:
    agent = await JsSipAgent.start("no-ua")
    try:
        with pytest.raises(AgentError, match="not registered"):
            await agent.unregister()
    finally:
        await agent.stop()
