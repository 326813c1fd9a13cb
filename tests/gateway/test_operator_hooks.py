"""What operators wire into their stack, on one real gateway: JSON log lines, call events (the
CDR) POSTed to a real local HTTP server and XADDed to a real redis-server's stream for a real
browser ⇄ phone call (aiortc ⇄ pjsua2, media anchored), and `ws2sip status` against the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.call_events import media_summary, mos_estimate
from gateway.logformat import LOG_CONTEXT, JsonFormatter
from gateway.logsafe import NetworkTextFilter
from tests.fixtures.gateway import REPO_ROOT, GatewayFactory, GatewayProcess
from tests.support.pjsua_phone import PjsuaPhone
from tests.support.ws_sip import WsSipUa
from tests.webrtc.browser_peer import BrowserPeer
from webrtc.rtcp import reported_jitter

DOMAIN = "ops.example.test"
STREAM = "ws2sip:cdr"
CALL_SECONDS = 2.5
EVENT_WAIT = 20.0  # a limit, not an assertion


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # POSTs answered 503: the first one, so that the gateway must retry
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, event: str, call_id: str) -> dict[str, Any]:
        async with asyncio.timeout(EVENT_WAIT):
            while True:
                for received in self.received:
                    if received["event"] == event and received["call_id"] == call_id:
                        return received
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    """A real HTTP server on loopback that records every POSTed event (after refusing the
    first POST)."""
    hook = Webhook("")

    async def receive(request: web.Request) -> web.Response:
        if hook.refused == 0:
            hook.refused += 1
            return web.Response(status=503)
        hook.received.append(await request.json())
        hook.arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/cdr", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/cdr"
    yield hook
    await runner.cleanup()


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return await process.wait(), output.decode()


def json_log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """Every line the running gateway wrote, each one JSON object (the log starts with the
    `user add` commands' output and the fixture's command lines)."""
    text = gateway.log_text()
    run_line = text.index(" run --domain ")
    return [json.loads(line) for line in text[text.index("\n", run_line) + 1:].splitlines()]


async def test_a_call_yields_events_json_logs_and_a_status(
    gateway_factory: GatewayFactory, redis_url: str, webhook: Webhook, tmp_path: Path,
) -> None:
    users = {"alice": secrets.token_urlsafe(9), "bob": secrets.token_urlsafe(9)}
    gateway = await gateway_factory(
        users=users, domain=DOMAIN, transports=("udp", "ws"), redis_url=redis_url,
        node_id="node-ops",
        extra_args=["--log-format", "json", "--events-webhook", webhook.url,
                    "--events-stream", STREAM],
    )
    browser = await WsSipUa.connect(gateway.ws_url, "alice", users["alice"], domain=DOMAIN)
    phone = await PjsuaPhone.start("ops-bob")
    peer = BrowserPeer(440.0)
    try:
        assert (await browser.register()).status == 200
        registered = await phone.register("127.0.0.1", gateway.port("udp"), "bob", users["bob"],
                                          DOMAIN)
        assert registered["code"] == 200
        await phone.play_tone(1000.0)
        await phone.set_auto_answer(200)
        response, dialog = await browser.call(f"sip:bob@{DOMAIN}", await peer.offer())
        assert response.status == 200 and dialog is not None
        await peer.accept_answer(dialog.remote_sdp)
        call_id = dialog.call_id
        started = await webhook.wait_for("call.start", call_id)
        answered = await webhook.wait_for("call.answer", call_id)

        # `ws2sip status` while the call is up.
        metrics = f"127.0.0.1:{gateway.metrics_port}"
        code, output = await run_cli("status", "--metrics", metrics, "--json")
        assert code == 0, output
        status = json.loads(output)
        assert status["node"] == "node-ops" and status["store"] == "single"
        assert status["flows"]["by_transport"]["ws"] >= 1
        assert status["registrations"]["bindings"] == 2
        assert status["calls"]["dialogs"] >= 1 and status["calls"]["media_sessions"] == 1
        assert status["limits"]["max_dialogs"] == 20_000
        code, text = await run_cli("status", "--metrics", metrics)
        assert code == 0 and "flows" in text and "2 bindings" in text, text

        await asyncio.sleep(CALL_SECONDS)
        await phone.hangup()
        await browser.take_bye()
        ended = await webhook.wait_for("call.end", call_id)
    finally:
        await peer.close()
        await browser.close()
        await phone.stop()

    assert webhook.refused == 1  # the refused call.start came again
    assert [e["event"] for e in webhook.received if e["call_id"] == call_id] == \
        ["call.start", "call.answer", "call.end"]
    for event in (started, answered, ended):
        assert event["node"] == "node-ops"
        assert event["caller"] == f"sip:alice@{DOMAIN}" and event["callee"] == f"sip:bob@{DOMAIN}"
    assert ended["cause"] == "bye" and ended["status"] is None
    assert CALL_SECONDS <= ended["duration_seconds"] < CALL_SECONDS + 15
    media = ended["media"]
    print(f"\ncall.end event: {json.dumps(ended)}")
    assert media["packets"] > 100, media  # 50 packets a second each way
    assert 0 <= media["loss_percent"] < 5 and media["jitter_ms"] >= 0
    assert 4.0 <= media["mos"] <= 4.5, media  # loopback: no loss to speak of

    async with aioredis.from_url(redis_url, decode_responses=True) as client:
        # Text, as decode_responses=True makes it; redis-py's types allow bytes or none.
        entries = cast("list[tuple[str, dict[str, str]]]", await client.xrange(STREAM))
    kinds = [fields["event"] for _, fields in entries if fields["call_id"] == call_id]
    assert kinds == ["call.start", "call.answer", "call.end"]
    stored_end = next(fields for _, fields in entries if fields["event"] == "call.end")
    assert json.loads(stored_end["media"]) == media

    lines = json_log_lines(gateway)
    assert any("ws2sip ready" in line["message"] and line["node"] == "node-ops"
               for line in lines)
    about_call = [line for line in lines if line.get("call_id") == call_id]
    assert about_call, "no log line carries the call's Call-ID"
    assert all(line["node"] == "node-ops" and line["flow"] for line in about_call)
    assert {line.get("user") for line in about_call} & {"alice", "bob"}


def test_json_log_lines_escape_and_cut_what_peers_sent() -> None:
    record = logging.LogRecord("ws2sip.test", logging.WARNING, __file__, 1,
                               "bad user %s", ("evil\r\n{\"forged\": 1}" + "x" * 500,), None)
    NetworkTextFilter().filter(record)
    token = LOG_CONTEXT.set(("call\x1b[31m-id", "mallory", "ws-1"))
    try:
        line = JsonFormatter("node-1").format(record)
    finally:
        LOG_CONTEXT.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"].startswith("bad user evil\\r\\n{")
    assert "more]" in entry["message"] and len(entry["message"]) < 260
    assert entry["call_id"] == "call\\x1b[31m-id"
    assert (entry["user"], entry["flow"], entry["node"], entry["level"]) == \
        ("mallory", "ws-1", "node-1", "WARNING")


def test_mos_estimate_follows_the_e_model() -> None:
    assert mos_estimate(0.0, 0.0) == pytest.approx(4.41, abs=0.01)  # G.711's best, R ≈ 93
    assert mos_estimate(5.0, 20.0) < mos_estimate(1.0, 20.0) < mos_estimate(0.0, 20.0)
    assert mos_estimate(60.0, 300.0) == 1.0 or mos_estimate(60.0, 300.0) < 1.5
    summary = media_summary({"webrtc_to_plain_packets": 480, "plain_to_webrtc_packets": 500,
                             "lost": 20, "jitter_us": 12_500})
    assert (summary["packets"], summary["lost"], summary["loss_percent"]) == (980, 20, 2.0)
    assert summary["jitter_ms"] == 12.5 and 3.0 < summary["mos"] < 4.2


def test_rtcp_report_blocks_give_their_largest_jitter() -> None:
    def report_block(jitter: int) -> bytes:
        return (b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00" + b"\x00\x00\x10\x00"
                + jitter.to_bytes(4, "big") + bytes(8))

    receiver_report = bytes([0x82, 201]) + (13).to_bytes(2, "big") + b"\x00\x00\x00\x09" \
        + report_block(40) + report_block(360)
    sdes = bytes([0x81, 202]) + (1).to_bytes(2, "big") + b"\x00\x00\x00\x09"
    assert reported_jitter(receiver_report + sdes) == 360
    assert reported_jitter(sdes) is None
    assert reported_jitter(receiver_report[:20]) is None  # cut short: nothing read
