"""Prometheus metrics at /metrics: what an operator watches on a gateway node.

Served only on the listener given by `--metrics` (gateway/app.py), never on the public HTTP
ones: flow counts, refusals and bindings tell an attacker how the node is doing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .dispatch import RequestCounts

# metric name → (help text, function reading the current value)
Readings = dict[str, tuple[str, Callable[[], int]]]
AsyncReadings = dict[str, tuple[str, Callable[[], Awaitable[int]]]]


class GatewayMetrics:
    def __init__(
        self, requests: RequestCounts, gauges: Readings, *, counters: Readings | None = None,
        async_gauges: AsyncReadings | None = None,
    ) -> None:
        """async_gauges: read (awaited) when scraped, e.g. from Redis."""
        self.registry = CollectorRegistry()
        self._async_gauges = async_gauges or {}
        self._async_values: dict[str, int] = {}
        self.registry.register(_RequestCounter(requests))
        self.registry.register(_Gauges({
            **gauges,
            **{name: (help_text, self._last_value(name))
               for name, (help_text, _) in self._async_gauges.items()},
        }))
        self.registry.register(_Counters(counters or {}))

    def _last_value(self, name: str) -> Callable[[], int]:
        """What handle() last read for an async gauge (the collector itself is synchronous)."""
        return lambda: self._async_values.get(name, 0)

    async def handle(self, request: web.Request) -> web.Response:
        for name, (_, read) in self._async_gauges.items():
            self._async_values[name] = await read()
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


class _RequestCounter(Collector):
    """The dispatcher's per-method counts (gateway.dispatch.RequestCounts) as a counter."""

    def __init__(self, requests: RequestCounts) -> None:
        self._requests = requests

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ws2sip_sip_requests", "SIP requests received, by method", labels=["method"]
        )
        for method, count in sorted(self._requests.by_method.items()):
            family.add_metric([method], count)
        yield family


class _Gauges(Collector):
    def __init__(self, gauges: Readings) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, read) in self._gauges.items():
            yield GaugeMetricFamily(name, help_text, value=read())


class _Counters(Collector):
    def __init__(self, counters: Readings) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (help_text, read) in self._counters.items():
            yield CounterMetricFamily(name, help_text, value=read())
