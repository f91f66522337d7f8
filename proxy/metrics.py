"""Prometheus metrics on `--metrics-port`: request counts and durations per service.

Off by default; when off the data plane does not call into this module at all.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from proxy.http.request import Request

_METHODS = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE"]
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["service", "method", "status"]
        self.requests = Counter(
            "pyproxy_http_requests_total", "HTTP requests handled", labels, registry=self.registry
        )
        self.duration = Histogram(
            "pyproxy_http_request_duration_seconds",
            "Time to answer HTTP requests",
            labels,
            registry=self.registry,
        )
        self._server = None

    @classmethod
    def start(cls, bind: str | None, port: int) -> Metrics:
        """Serve /metrics on bind:port from a background thread."""
        metrics = cls()
        metrics._server, _ = start_http_server(port, addr=bind or "0.0.0.0", registry=metrics.registry)
        return metrics

    def observe(self, request: Request) -> None:
        method = request.method.decode() if request.method in _METHODS else "OTHER"
        labels = (request.service.decode(), method, str(request.status or 200))
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(time.time() - request.started_at)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
