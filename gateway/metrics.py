"""Prometheus metrics at /metrics: what an operator watches on a gateway node."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .dispatch import RequestCounts


class GatewayMetrics:
    def __init__(
        self, requests: RequestCounts, gauges: dict[str, tuple[str, Callable[[], int]]]
    ) -> None:
        """gauges: metric name → (help text, function reading the current value)."""
        self.registry = CollectorRegistry()
        self.registry.register(_RequestCounter(requests))
        self.registry.register(_Gauges(gauges))

    async def handle(self, request: web.Request) -> web.Response:
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
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, read) in self._gauges.items():
            yield GaugeMetricFamily(name, help_text, value=read())
