"""Prometheus metrics with kamal-proxy's names, kept off the hot path.

Requests only touch plain dictionaries and lists owned by the event loop (a counter
increment and a histogram bucket increment); a custom prometheus-client collector turns
them into the three metric families when the exposition server — prometheus-client's
own threaded HTTP server on ``--metrics-port`` — is scraped.  Like Go's promhttp it
answers on every path and also exposes the default process/platform collectors.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)

# prometheus-client's (and Go client's) default histogram buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS_NAME = "kamal_proxy_http_requests"
DURATION_NAME = "kamal_proxy_http_request_duration_seconds"
IN_FLIGHT_NAME = "kamal_proxy_http_in_flight_requests"


def normalise_method(method: str) -> str:
    return method if method in METHODS else "OTHER"


class _Series:
    """Count, sum and per-bucket counts for one (service, method, status)."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)


class Metrics:
    """Request metrics; every method is a cheap no-op when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._series: dict[tuple[str, str, int], _Series] = {}
        self.in_flight: dict[str, int] = {}

    def observe(self, service: str, method: str, status: int, seconds: float) -> None:
        key = (service, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.count += 1
        series.total += seconds
        series.buckets[bisect_left(BUCKETS, seconds)] += 1

    def request_started(self, service: str) -> None:
        self.in_flight[service] = self.in_flight.get(service, 0) + 1

    def request_finished(self, service: str) -> None:
        self.in_flight[service] = self.in_flight.get(service, 0) - 1

    # --- exposition (runs on the exporter thread) -----------------------------------------

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["service", "method", "status"]
        requests = CounterMetricFamily(
            REQUESTS_NAME,
            "HTTP requests processed, labeled by service, method and status",
            labels=labels,
        )
        durations = HistogramMetricFamily(
            DURATION_NAME, "HTTP request duration in seconds", labels=labels
        )
        merged: dict[tuple[str, str, str], tuple[int, float, list[int]]] = {}
        for (service, method, status), series in list(self._series.items()):
            key = (service, normalise_method(method), str(status))
            count, total, buckets = merged.get(key, (0, 0.0, [0] * (len(BUCKETS) + 1)))
            merged[key] = (
                count + series.count,
                total + series.total,
                [a + b for a, b in zip(buckets, series.buckets, strict=True)],
            )
        for key in sorted(merged):
            count, total, buckets = merged[key]
            requests.add_metric(list(key), count)
            cumulative = []
            running = 0
            for bound, hits in zip((*BUCKETS, float("inf")), buckets, strict=True):
                running += hits
                cumulative.append((_bucket_label(bound), running))
            durations.add_metric(list(key), cumulative, total)
        yield requests
        yield durations
        gauge = GaugeMetricFamily(
            IN_FLIGHT_NAME, "HTTP requests currently being processed", labels=["service"]
        )
        for service, value in sorted(list(self.in_flight.items())):
            gauge.add_metric([service], value)
        yield gauge


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def start_exposition_server(metrics: Metrics, port: int) -> Callable[[], None]:
    """Serve the default registry plus our collector on ``:port``; returns a stopper."""
    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(metrics)
    server, _thread = start_http_server(port, addr="0.0.0.0")

    def stop() -> None:
        server.shutdown()
        server.server_close()
        REGISTRY.unregister(metrics)

    return stop
