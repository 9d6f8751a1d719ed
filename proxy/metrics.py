"""Prometheus metrics with kamal-proxy's names, kept off the hot path.

Requests only touch plain integers owned by the event loop: each service name has a
``ServiceStats`` (bound to the ``Service`` object, so a request finds it with one attribute
load) holding its in-flight count and, per (method, status), a list ``[sum of durations in
ns, bucket counts…]``.  A custom prometheus-client collector turns them into the three
metric families when the exposition server — prometheus-client's own threaded HTTP server
on ``--metrics-port`` — is scraped; counts are the sums of the buckets.  Like Go's promhttp
it answers on every path and also exposes the default process/platform collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)

# prometheus-client's (and Go client's) default histogram buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The same bounds in integer nanoseconds: ``bisect_left(BUCKETS_NS, ns) + 1`` is the slot
# of a duration in a series list (slot 0 holds the sum).  ``le`` buckets: a duration equal
# to a bound belongs to that bound's bucket, which is what bisect_left gives.
BUCKETS_NS = tuple(round(bound * 1e9) for bound in BUCKETS)

REQUESTS_NAME = "kamal_proxy_http_requests"
DURATION_NAME = "kamal_proxy_http_request_duration_seconds"
IN_FLIGHT_NAME = "kamal_proxy_http_in_flight_requests"


def normalise_method(method: str) -> str:
    return method if method in METHODS else "OTHER"


def new_series() -> list[int]:
    """``[sum_ns, bucket_0, …, bucket_11]`` (the last bucket is +Inf)."""
    return [0] * (len(BUCKETS) + 2)


class ServiceStats:
    """The counters of one service name (kept across remove/redeploy, as Go's vectors)."""

    __slots__ = ("in_flight", "name", "series")

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        self.series: dict[tuple[str, int], list[int]] = {}


class Metrics:
    """Request metrics; nothing is recorded when ``enabled`` is false.

    A name's ``ServiceStats`` is created when its first (not excluded) request starts.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.services: dict[str, ServiceStats] = {}
        # Requests that matched no service: labelled service="" and never in flight.
        self.unrouted = ServiceStats("")

    def stats(self, service: str) -> ServiceStats:
        stats = self.services.get(service)
        if stats is None:
            stats = self.services[service] = ServiceStats(service)
        return stats

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
        merged: dict[tuple[str, str, str], list[int]] = {}
        all_stats = [self.unrouted, *list(self.services.values())]
        for stats in all_stats:
            for (method, status), series in list(stats.series.items()):
                key = (stats.name, normalise_method(method), str(status))
                into = merged.get(key)
                if into is None:
                    into = merged[key] = new_series()
                for index, value in enumerate(list(series)):
                    into[index] += value
        for key in sorted(merged):
            series = merged[key]
            buckets = series[1:]
            requests.add_metric(list(key), sum(buckets))
            cumulative = []
            running = 0
            for bound, hits in zip((*BUCKETS, float("inf")), buckets, strict=True):
                running += hits
                cumulative.append((_bucket_label(bound), running))
            durations.add_metric(list(key), cumulative, series[0] / 1e9)
        yield requests
        yield durations
        gauge = GaugeMetricFamily(
            IN_FLIGHT_NAME, "HTTP requests currently being processed", labels=["service"]
        )
        # A service's gauge appears once a request for it was counted (as a Go GaugeVec).
        for stats in sorted(list(self.services.values()), key=lambda s: s.name):
            gauge.add_metric([stats.name], stats.in_flight)
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
