"""WebSocket ping/pong for all connections of a listener, on one timer.

aiohttp's own heartbeat re-arms on every frame a connection receives: a callback, a clock read
and a timer update per SIP message, about 3 us of the gateway's CPU per message on the hottest
path (REGISTER), for connections that are evidently alive. Here a sweep every quarter interval
pings only the connections that have been quiet for a whole interval, and drops those that
leave the ping unanswered for half an interval more (aiohttp's own pong timeout), so a
dead peer (a phone that lost its network) is noticed within about two intervals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger(f"ws2sip.{__name__}")


class PingedFlow(Protocol):
    """What the keepalive needs of a connection (gateway.websocket.WebSocketFlow)."""

    id: str
    last_activity: float  # the last SIP frame received, set by the transport layer

    def ping(self) -> None: ...

    def abort(self, reason: str) -> None: ...


class _State:
    __slots__ = ("ping_sent_at", "pong_at")

    def __init__(self, now: float) -> None:
        self.ping_sent_at: float | None = None
        self.pong_at = now


class WebSocketKeepalive:
    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"ping interval must be positive, got {interval}")
        self.interval = interval
        self.pong_timeout = interval / 2
        self._flows: dict[PingedFlow, _State] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, flow: PingedFlow) -> None:
        self._flows[flow] = _State(time.monotonic())
        if self._timer is None:
            self._arm()

    def discard(self, flow: PingedFlow) -> None:
        self._flows.pop(flow, None)
        if not self._flows and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pong_received(self, flow: PingedFlow) -> None:
        state = self._flows.get(flow)
        if state is not None:
            state.pong_at = time.monotonic()
            state.ping_sent_at = None

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval / 4, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        unanswered: list[PingedFlow] = []
        for flow, state in self._flows.items():
            sent = state.ping_sent_at
            if sent is not None:
                if flow.last_activity > sent:
                    state.ping_sent_at = None  # SIP arrived since: the peer is there
                elif now - sent >= self.pong_timeout:
                    unanswered.append(flow)
                    continue
                else:
                    continue
            if now - max(flow.last_activity, state.pong_at) >= self.interval:
                state.ping_sent_at = now
                flow.ping()
        for flow in unanswered:
            self.discard(flow)
            flow.abort(f"no pong within {self.pong_timeout:g} s of a ping")
        if self._flows:
            self._arm()
