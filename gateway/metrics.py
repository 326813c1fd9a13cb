"""Prometheus metrics at /metrics: what an operator watches on a gateway node."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class GatewayMetrics:
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], int]]]) -> None:
        """gauges: metric name → (help text, function reading the current value)."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ws2sip_sip_requests", "SIP requests received, by method", ["method"],
            registry=self.registry,
        )
        self.registry.register(_Gauges(gauges))
        self._per_method: dict[str, Counter] = {}

    def count_request(self, method: str) -> None:
        # labels() takes a lock and builds a key on every call: keep each method's child.
        child = self._per_method.get(method)
        if child is None:
            if len(self._per_method) >= 64:  # methods are client-chosen tokens: bound the set
                method = "other"
            child = self._per_method.setdefault(method, self.requests.labels(method))
        child.inc()

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


class _Gauges(Collector):
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, read) in self._gauges.items():
            yield GaugeMetricFamily(name, help_text, value=read())
