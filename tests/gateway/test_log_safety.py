"""What the network sends cannot forge or flood the gateway's log: control characters are
escaped, long values cut (gateway/logsafe.py), and a refused HTTP request is one line."""

from __future__ import annotations

import asyncio
import re
import secrets

import aiohttp

from tests.fixtures.gateway import GatewayFactory
from tests.support.ws_sip import WsSipUa

SETTLE = 0.5  # seconds for the gateway's output to reach its log


async def test_user_names_from_the_network_are_escaped_and_cut(
    gateway_factory: GatewayFactory,
) -> None:
    # Info level: the debug wire log shows whole messages, on purpose.
    gateway = await gateway_factory(users={"alice": secrets.token_urlsafe(12)},
                                    transports=("ws",), extra_args=["--log-level", "info"])
    names = ["a" * 5000, "evil\x00name", "fake\rWARNING forged line", "bell\x07\x1b[31mred"]
    ua = await WsSipUa.connect(gateway.ws_url, domain=gateway.domain)
    try:
        for name in names:
            response = await ua.register("alice", "wrong", headers=())
            assert response.status == 401
            response = await ua.register(name, "wrong", aor_user="alice")
            assert response.status in (400, 401, 403)
    finally:
        await ua.close()
    await asyncio.sleep(SETTLE)
    text = gateway.log_text()
    for raw in ("\x00", "\x07", "\x1b", "\r"):
        assert raw not in text, f"{raw!r} reached the log"
    assert "unknown user 'fake\\rWARNING forged line'" in text
    assert "unknown user 'evil\\x00name'" in text
    long_lines = [line for line in text.splitlines() if "aaaaaaaaaa" in line]
    assert long_lines, "the long user name's failure was not logged"
    assert all(len(line) < 500 and "…[4800 more]" in line for line in long_lines)


async def test_an_oversized_http_request_is_one_log_line(gateway_factory: GatewayFactory) -> None:
    gateway = await gateway_factory(transports=("ws",))
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"http://127.0.0.1:{gateway.ws_port}/",
                                   headers={"X-Big": "x" * 20_000}) as reply:
                assert reply.status in (400, 431)
    await asyncio.sleep(SETTLE)
    text = gateway.log_text()
    assert "Traceback" not in text
    assert len(re.findall(r"HTTP request from 127\.0\.0\.1 refused: 4\d\d ", text)) == 3
