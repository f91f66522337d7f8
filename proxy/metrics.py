"""Prometheus metrics on `--metrics-port`, under kamal-proxy's names and labels (spec 14), so dashboards
made for kamal-proxy keep working: `kamal_proxy_http_requests_total` and
`kamal_proxy_http_request_duration_seconds` by service, method and status, and
`kamal_proxy_http_in_flight_requests` by service.

Off by default; when off the data plane does not call into this module at all. The in-flight count is a
plain dict kept on the event loop and read when Prometheus scrapes, not a locked gauge per request.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.http.request import Request

if TYPE_CHECKING:
    from proxy.service import Service

_METHODS = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE"]
)


class Metrics:
    """The data plane's counts. With a registry they are collected from it; in a worker (no registry)
    prometheus_client keeps them in files of the fleet's directory (its multiprocess mode, chosen by
    PROMETHEUS_MULTIPROC_DIR in the worker's environment), which the control process sums."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        labels = ["service", "method", "status"]
        self.requests = Counter(
            "kamal_proxy_http_requests_total", "HTTP requests processed", labels, registry=registry
        )
        self.duration = Histogram(
            "kamal_proxy_http_request_duration_seconds",
            "Time taken to process HTTP requests",
            labels,
            registry=registry,
        )
        self.in_flight: defaultdict[bytes, int] = defaultdict(int)
        if registry is not None:
            registry.register(InFlight(lambda: self.in_flight))

    def started(self, request: Request, service: Service) -> None:
        """A request was routed to `service` (and `request.path` is the path it is sent with)."""
        excluded = service.options.exclude_metrics_paths
        if excluded and request.path.partition(b"?")[0].decode("latin-1") in excluded:
            request.unmetered = True  # only the access log sees it
            return
        self.in_flight[request.service] += 1

    def observe(self, request: Request) -> None:
        """A request finished (whether or not it was routed: unrouted ones count under service "")."""
        if request.unmetered:
            return
        service = request.service
        if service:
            self.in_flight[service] -= 1
        method = request.method.decode() if request.method in _METHODS else "OTHER"
        labels = (service.decode(), method, str(request.status or 200))
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(time.time() - request.started_at)


class MetricsEndpoint:
    """Serves a registry on bind:port (any path) from a background thread."""

    def __init__(self, registry: CollectorRegistry, bind: str | None, port: int) -> None:
        self._server, _ = start_http_server(port, addr=bind or "0.0.0.0", registry=registry)

    def stop(self) -> None:
        self._server.shutdown()


def process_registry() -> CollectorRegistry:
    """A registry with this process's own metrics: kamal-proxy serves Go's default registry, whose
    process metrics dashboards also chart."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class InFlight(Collector):
    """`kamal_proxy_http_in_flight_requests`, read from the counts (by service) at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[bytes, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kamal_proxy_http_in_flight_requests", "Number of in-flight HTTP requests", labels=["service"]
        )
        for service, count in list(self.counts().items()):
            family.add_metric([service.decode()], count)
        yield family
