"""The gateway's WebSocket handler alone, on an aiohttp test server, over a transport layer
that answers every request with 200: the WebSocket edge without the rest of the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.websocket import WebSocketPolicy, make_handler
from sip.flow import Flow
from sip.message import Request, Response
from sip.transport import TransportLayer


def options_request(call_id: str) -> str:
    return (
        "OPTIONS sip:example.test SIP/2.0\r\n"
        "Via: SIP/2.0/WS client.invalid;branch=z9hG4bK" + call_id + "\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=1\r\n"
        "To: <sip:example.test>\r\nCall-ID: " + call_id + "\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def answering_layer() -> TransportLayer:
    """No listener is opened, so the transport's idle sweeper never runs."""
    layer = TransportLayer()

    def answer(message: Request | Response, flow: Flow) -> None:
        if isinstance(message, Request):
            flow.send(message.response(200).to_bytes())

    layer.on_message = answer
    return layer


@asynccontextmanager
async def websocket_server(
    layer: TransportLayer, policy: WebSocketPolicy, *, direct: bool
) -> AsyncIterator[TestServer]:
    """Serves /ws; direct: frames straight from aiohttp's parser, else the receive() loop."""
    app = web.Application()
    app.router.add_get("/ws", make_handler(layer, policy, secure=False, direct_delivery=direct))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def wait_for_no_flows(layer: TransportLayer) -> None:
    for _ in range(100):
        if layer.flow_count == 0:
            return
        await asyncio.sleep(0.02)
    assert layer.flow_count == 0
