"""Call events, the CDR billing and dashboards need: `call.start`, `call.answer` and `call.end`
(with its cause, duration and media stats) for every call this node routes, POSTed as JSON to
a webhook and/or appended to a Redis stream (XADD ... MAXLEN ~).

The dialog table reports each event synchronously (DialogTable.on_call_event); `observe` only
builds a small dict and puts it on a bounded queue per sink, so signalling never waits for a
slow webhook or Redis. A full queue drops the event (counted, logged once a minute). Each sink
has one sender task retrying an event a bounded number of times with growing pauses.

Only calls that entered at this node are reported: the node that relays a call to the node
holding the callee's WebSocket (its dialog has neither an authenticated caller nor a trunk)
stays silent, so a call yields one CDR, from the node its caller reached.

Media stats come from the call's anchor when it runs in this process (media_workers = 0): the
relayed and lost packet counts, the largest interarrival jitter either end reported in RTCP,
and a MOS estimate from the E-model (ITU-T G.107) simplified for G.711 with packet-loss
concealment. Calls without an anchor (browser to browser, phone to phone) have none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from .redis_connect import open_redis, parse_redis_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from .dialogs import Dialog

log = logging.getLogger(f"ws2sip.{__name__}")

QUEUE_SIZE = 10_000  # events waiting per sink; beyond, new ones are dropped
ATTEMPTS = 4  # per event and sink
RETRY_PAUSES = (0.5, 2.0, 5.0)  # seconds before the 2nd, 3rd and 4th attempt
WEBHOOK_TIMEOUT = 5.0
DROP_LOG_INTERVAL = 60.0
MAX_TRACKED_CALLS = 100_000
FLUSH_SECONDS = 3.0  # start/answer times of calls in progress


@dataclass(frozen=True, slots=True)
class EventSettings:
    node: str
    webhook: str = ""
    stream: str = ""
    stream_maxlen: int = 100_000
    redis_url: str = ""


def mos_estimate(loss_percent: float, jitter_ms: float, delay_ms: float = 0.0) -> float:
    """MOS (1-4.5) from the E-model's R factor, simplified for G.711 with loss concealment:
    R = 93.2 - Id - Ie_eff, with the effective delay d = delay + 2 * jitter + 10 ms
    (Id = d/40 below 160 ms, else (d - 120)/10) and Ie_eff = 95 * loss / (loss + 4.3)
    (Ie = 0, Bpl = 4.3 for G.711 under random loss)."""
    effective_delay = delay_ms + 2 * jitter_ms + 10.0
    delay_impairment = effective_delay / 40 if effective_delay < 160 else \
        (effective_delay - 120) / 10
    loss_impairment = 95 * loss_percent / (loss_percent + 4.3)
    r = 93.2 - delay_impairment - loss_impairment
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return round(1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r), 2)


def media_summary(stats: Mapping[str, int]) -> dict[str, Any]:
    """The media part of a call.end event from MediaSession.stats()."""
    packets = stats.get("webrtc_to_plain_packets", 0) + stats.get("plain_to_webrtc_packets", 0)
    lost = stats.get("lost", 0)
    expected = packets + lost
    loss_percent = 100.0 * lost / expected if expected else 0.0
    jitter_ms = stats.get("jitter_us", 0) / 1000
    return {
        "packets": packets,
        "lost": lost,
        "loss_percent": round(loss_percent, 2),
        "jitter_ms": round(jitter_ms, 1),
        "mos": mos_estimate(loss_percent, jitter_ms) if packets else None,
    }


class _Sink:
    """One destination: a bounded queue and the task that delivers from it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0
        self.delivered = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL

    def put(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
                self._drop_logged_at = now
                log.warning("call events to %s: queue full (%d), events dropped: %d so far "
                            "(logged once a minute)", self.name, QUEUE_SIZE, self.dropped)


class CallEvents:
    def __init__(self, settings: EventSettings) -> None:
        self._settings = settings
        self._sinks: list[_Sink] = []
        self._webhook = _Sink("webhook") if settings.webhook else None
        self._stream = _Sink("redis stream") if settings.stream else None
        self._sinks = [sink for sink in (self._webhook, self._stream) if sink is not None]
        self._http: aiohttp.ClientSession | None = None
        self._redis: Redis | RedisCluster | None = None
        # Call-ID → (unix start time, unix answer time or 0)
        self._calls: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def counts(self) -> dict[str, dict[str, int]]:
        return {sink.name: {"delivered": sink.delivered, "failed": sink.failed,
                            "dropped": sink.dropped, "queued": sink.queue.qsize()}
                for sink in self._sinks}

    async def start(self) -> None:
        if self._webhook is not None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT),
                headers={"User-Agent": "ws2sip call events"},
            )
            self._webhook.task = asyncio.create_task(
                self._deliver(self._webhook, self._post), name="call events: webhook")
        if self._stream is not None:
            self._redis = open_redis(parse_redis_url(self._settings.redis_url),
                                     max_connections=2, pool_timeout=WEBHOOK_TIMEOUT)
            self._stream.task = asyncio.create_task(
                self._deliver(self._stream, self._xadd), name="call events: redis stream")

    async def close(self) -> None:
        """Stops the senders after up to FLUSH_SECONDS of delivering what is queued (the calls
        ended by the shutdown); what is left then is given up, and logged with its count."""
        for sink in self._sinks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await sink.queue.join()
            if sink.task is not None:
                sink.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sink.task
            if sink.queue.qsize():
                log.warning("call events to %s: %d not delivered at shutdown", sink.name,
                            sink.queue.qsize())
        if self._http is not None:
            await self._http.close()
        if self._redis is not None:
            await self._redis.aclose()

    def observe(self, kind: str, dialog: Dialog, cause: str, status: int) -> None:
        """DialogTable.on_call_event: never blocks, never raises into signalling."""
        if dialog.caller is None and dialog.trunk is None:
            return  # relayed for another node, which reports the call
        try:
            event = self._event(kind, dialog, cause, status)
        except Exception:
            log.exception("call event %s for %s could not be built", kind, dialog.call_id)
            return
        if event is not None:
            for sink in self._sinks:
                sink.put(event)

    def _event(self, kind: str, dialog: Dialog, cause: str, status: int) -> dict[str, Any] | None:
        now = time.time()
        if kind == "start":
            if len(self._calls) >= MAX_TRACKED_CALLS:
                del self._calls[next(iter(self._calls))]
            self._calls[dialog.call_id] = (now, 0.0)
        elif kind == "answer":
            started, _ = self._calls.get(dialog.call_id, (now, 0.0))
            self._calls[dialog.call_id] = (started, now)
        started, answered = self._calls.get(dialog.call_id, (now, 0.0))
        event: dict[str, Any] = {
            "event": f"call.{kind}",
            "time": _iso(now),
            "node": self._settings.node,
            "call_id": dialog.call_id,
            "caller": dialog.caller,
            "callee": dialog.callee,
            "trunk": dialog.trunk,
        }
        if kind == "answer":
            event["setup_seconds"] = round(now - started, 3)
        if kind == "end":
            self._calls.pop(dialog.call_id, None)
            event.update({
                "cause": cause,
                "status": status or None,
                "started": _iso(started),
                "answered": _iso(answered) if answered else None,
                "duration_seconds": round(now - answered, 3) if answered else 0.0,
                "media": self._media(dialog),
            })
        return event

    @staticmethod
    def _media(dialog: Dialog) -> dict[str, Any] | None:
        from webrtc import MediaSession  # the media plane only where calls end

        session = dialog.media
        if not isinstance(session, MediaSession):
            return None  # no anchor, or one in a media worker process
        return media_summary(session.stats())

    async def _deliver(self, sink: _Sink, send: Any) -> None:
        while True:
            event = await sink.queue.get()
            try:
                await self._send_with_retries(sink, send, event)
            finally:
                sink.queue.task_done()

    @staticmethod
    async def _send_with_retries(sink: _Sink, send: Any, event: dict[str, Any]) -> None:
        for attempt in range(ATTEMPTS):
            try:
                await send(event)
                sink.delivered += 1
                return
            except Exception as error:
                if attempt == ATTEMPTS - 1:
                    sink.failed += 1
                    log.warning("call event %s of %s not delivered to %s after %d attempts: %s",
                                event["event"], event["call_id"], sink.name, ATTEMPTS, error)
                    return
                await asyncio.sleep(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)])

    async def _post(self, event: dict[str, Any]) -> None:
        assert self._http is not None
        async with self._http.post(self._settings.webhook, json=event) as response:
            if response.status >= 300:
                raise RuntimeError(f"webhook answered {response.status}")

    async def _xadd(self, event: dict[str, Any]) -> None:
        assert self._redis is not None
        fields = {key: value if isinstance(value, str) else json.dumps(value)
                  for key, value in event.items() if value is not None}
        await self._redis.xadd(self._settings.stream, fields,  # type: ignore[arg-type]
                               maxlen=self._settings.stream_maxlen, approximate=True)


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="milliseconds")
