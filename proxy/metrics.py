"""Prometheus metrics with kamal-proxy's names, served from a thread on ``--metrics-port``.

The per-request cost is kept to two dictionary look-ups: label children are bound once per
(service, method, status) and cached, so the hot path never goes through ``labels()``.
The exposition server is prometheus-client's own threaded HTTP server, so scrapes never run
on the event loop.  Like promhttp, it answers on every path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})

Observer = tuple[Callable[..., None], Callable[[float], None]]


def normalise_method(method: str) -> str:
    return method if method in METHODS else "OTHER"


class Metrics:
    """Either live Prometheus collectors or a no-op (when the metrics port is 0)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._observers: dict[tuple[str, str, int], Observer] = {}
        self._gauges: dict[str, Any] = {}
        if not enabled:
            return
        from prometheus_client import Counter, Gauge, Histogram

        self._requests = Counter(
            "kamal_proxy_http_requests_total",
            "HTTP requests processed, labeled by service, method and status",
            ["service", "method", "status"],
        )
        self._durations = Histogram(
            "kamal_proxy_http_request_duration_seconds",
            "HTTP request duration in seconds",
            ["service", "method", "status"],
        )
        self._in_flight = Gauge(
            "kamal_proxy_http_in_flight_requests",
            "HTTP requests currently being processed",
            ["service"],
        )

    def observe(self, service: str, method: str, status: int, seconds: float) -> None:
        key = (service, method, status)
        observer = self._observers.get(key)
        if observer is None:
            labels = (service, normalise_method(method), str(status))
            observer = (
                self._requests.labels(*labels).inc,
                self._durations.labels(*labels).observe,
            )
            self._observers[key] = observer
        observer[0]()
        observer[1](seconds)

    def in_flight(self, service: str) -> Any:
        """The service's in-flight gauge child (``inc``/``dec``), or None when disabled."""
        if not self.enabled:
            return None
        gauge = self._gauges.get(service)
        if gauge is None:
            gauge = self._in_flight.labels(service)
            self._gauges[service] = gauge
        return gauge


def start_exposition_server(port: int) -> Callable[[], None]:
    """Serve the default registry on ``:port`` from a daemon thread; returns a stopper."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr="0.0.0.0")
    del thread

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
