"""Access logs, lifecycle events, Prometheus metrics, graceful shutdown."""

from __future__ import annotations

import os
import stat
import threading
import urllib.request
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, Response, UpstreamServer, free_port, request, wait_until

pytestmark = pytest.mark.proxy


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def metric_value(text: str, line_prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def metered(make_proxy: Callable[..., Proxy]) -> Proxy:
    return make_proxy(metrics_port=free_port())


def test_request_log_line(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy(
        "myapp",
        app.address,
        host="app.example.com",
        log_request_header=["X-Custom", "Cache-Control"],
        log_response_header="X-Upstream",
    )
    proxy.get(
        "/somepath?q=ok",
        method="POST",
        host="app.example.com",
        body=b"hello",
        headers={
            "X-Request-ID": "request-id",
            "X-Forwarded-For": "192.168.1.1",
            "User-Agent": "Robot/1",
            "Content-Type": "application/json",
            "X-Custom": "hello",
        },
    )
    entry = proxy.wait_for_log("Request", request_id="request-id")
    assert entry["level"] == "INFO"
    expected = {
        "host": "app.example.com",
        "port": proxy.http_port,
        "path": "/somepath",
        "method": "POST",
        "status": 200,
        "service": "myapp",
        "target": app.address,
        "client_addr": "127.0.0.1",
        "remote_addr": "192.168.1.1",
        "user_agent": "Robot/1",
        "req_content_type": "application/json",
        "resp_content_type": "text/plain",
        "query": "q=ok",
        "req_content_length": 5,
        "resp_content_length": 5,
        "proto": "HTTP/1.1",
        "scheme": "http",
        "req_x_custom": "hello",
        "req_cache_control": "",
        "resp_x_upstream": "first",
    }
    assert {k: entry.get(k) for k in expected} == expected
    assert isinstance(entry["duration"], int) and entry["duration"] > 0
    assert entry["client_port"].isdigit()
    assert list(entry)[:3] == ["time", "level", "msg"]


def test_unrouted_requests_are_logged(proxy: Proxy) -> None:
    proxy.get("/nowhere", host="nobody.example.com")
    entry = proxy.wait_for_log("Request", path="/nowhere")
    assert (entry["status"], entry["service"], entry["target"]) == (404, "", "")


def test_lifecycle_events_are_logged(proxy: Proxy, app: UpstreamServer) -> None:
    started = proxy.wait_for_log("Server started")
    assert (started["http"], started["https"]) == (proxy.http_port, proxy.https_port)
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", check=True)
    proxy.cli("resume", "web", check=True)
    for msg in (
        "No previous state to restore",
        "Deploying",
        "Target health updated",
        "Deployed",
        "Service paused",
        "Service drained",
        "Service resumed",
    ):
        proxy.wait_for_log(msg)


def test_debug_level(make_proxy: Callable[..., Proxy], proxy: Proxy) -> None:
    debug = make_proxy(extra_args=["--debug"])
    debug.cli("list", check=True)
    entry = debug.wait_for_log("Command received", method="list")
    assert entry["level"] == "DEBUG"
    proxy.cli("list", check=True)  # the default level is INFO: no debug lines
    proxy.cli("remove", "ghost")
    assert all(e.get("level") != "DEBUG" for e in proxy.logs())


def test_metrics_use_kamal_proxy_names(metered: Proxy, app: UpstreamServer) -> None:
    metered.deploy("web", app.address)
    for _ in range(3):
        metered.get("/")
    metered.get("/", host="example.com", method="PURGE")
    metered.cli("remove", "web", check=True)
    metered.get("/gone")
    text = wait_until(
        lambda: (
            (t := scrape(metered.metrics_port))
            and 'kamal_proxy_http_requests_total{method="GET",service="",status="404"}' in t
            and t
        )
    )
    assert (
        metric_value(
            text, 'kamal_proxy_http_requests_total{method="GET",service="web",status="200"}'
        )
        == 3.0
    )
    assert (
        metric_value(
            text, 'kamal_proxy_http_requests_total{method="OTHER",service="web",status="200"}'
        )
        == 1.0
    )
    assert (
        metric_value(
            text,
            'kamal_proxy_http_request_duration_seconds_count{method="GET",service="web",status="200"}',
        )
        == 3.0
    )
    assert 'kamal_proxy_http_request_duration_seconds_bucket{le="0.005",method="GET"' in text
    assert metric_value(text, 'kamal_proxy_http_in_flight_requests{service="web"}') == 0.0
    # promhttp answers on any path, and process metrics come along.
    assert "kamal_proxy_http_requests_total" in scrape(metered.metrics_port, "/anything")
    assert "process_" in text or "python_" in text
    metered.wait_for_log("Metrics enabled")


def test_in_flight_gauge_and_excluded_paths(metered: Proxy, app: UpstreamServer) -> None:
    metered.deploy("web", app.address, exclude_metrics_path="/up,/healthz")
    result: list[Response] = []
    thread = threading.Thread(target=lambda: result.append(metered.get("/slow")), daemon=True)
    thread.start()
    wait_until(app.slow_started.is_set)
    text = scrape(metered.metrics_port)
    assert metric_value(text, 'kamal_proxy_http_in_flight_requests{service="web"}') == 1.0
    app.release.set()
    thread.join(10)
    metered.get("/up")
    metered.get("/healthz", method="POST", body=b"")
    metered.get("/up/nested")
    metered.wait_for_log("Request", path="/up/nested")
    text = scrape(metered.metrics_port)
    assert (
        metric_value(
            text, 'kamal_proxy_http_requests_total{method="POST",service="web",status="200"}'
        )
        is None
    )
    assert (
        metric_value(
            text, 'kamal_proxy_http_requests_total{method="GET",service="web",status="200"}'
        )
        == 2.0
    )
    assert metric_value(text, 'kamal_proxy_http_in_flight_requests{service="web"}') == 0.0
    assert any(e.get("path") == "/healthz" for e in metered.request_logs())  # still logged


def test_metrics_disabled_by_default(proxy: Proxy) -> None:
    assert "Metrics enabled" not in proxy.log_messages()


def test_graceful_shutdown_lets_requests_finish(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    result: list[Response] = []
    thread = threading.Thread(target=lambda: result.append(proxy.get("/slow")), daemon=True)
    thread.start()
    wait_until(app.slow_started.is_set)
    assert proxy.process is not None
    proxy.process.terminate()  # SIGTERM
    threading.Timer(0.3, app.release.set).start()
    thread.join(15)
    assert result and result[0].status == 200 and result[0].text == "first slow done"
    assert proxy.process.wait(timeout=15) == 0
    proxy.wait_for_log("Server stopped")
    with pytest.raises(OSError):
        request(proxy.http_port, "/", timeout=2)


def test_control_socket_is_private_and_removed(proxy: Proxy) -> None:
    mode = stat.S_IMODE(os.stat(proxy.socket_path).st_mode)
    assert mode == 0o600
    assert proxy.stop() == 0
    assert not proxy.socket_path.exists()


def test_stale_socket_file_is_replaced(make_proxy: Callable[..., Proxy]) -> None:
    instance = make_proxy(start=False)
    instance.socket_path.write_text("stale")
    instance.start()
    assert instance.cli("list").returncode == 0
