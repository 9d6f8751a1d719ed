"""Deploys: health checks, timeouts, the atomic switch, draining, --force."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, Response, UpstreamServer, WebSocketClient, wait_until

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def in_background(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_health_check_request_shape(proxy: Proxy, app: UpstreamServer) -> None:
    app.health_path = "/healthz"
    proxy.deploy("web", app.address, health_check_path="/healthz")
    check = app.health_checks[0]
    assert check["User-Agent"] == "kamal-proxy"
    assert check["Host"] == app.address


def test_health_check_host_header_and_path_without_slash(proxy: Proxy, app: UpstreamServer) -> None:
    app.health_path = "/web/index.html"
    proxy.deploy(
        "web", app.address, health_check_path="web/index.html", health_check_host="example.com"
    )
    assert app.health_checks[-1]["Host"] == "example.com"


def test_health_check_port(proxy: Proxy, upstream: Upstreams) -> None:
    app, health = upstream("app"), upstream("health")
    app.health_status = 500  # the app's own port would fail the check
    proxy.deploy("web", app.address, health_check_port=str(health.port))
    assert len(health.health_checks) >= 1
    assert proxy.get("/").text == "app"


def test_any_2xx_is_healthy(proxy: Proxy, app: UpstreamServer) -> None:
    app.health_status = 204
    assert proxy.deploy("web", app.address).returncode == 0


def test_failed_deploy_changes_nothing(proxy: Proxy, app: UpstreamServer) -> None:
    app.health_status = 500
    result = proxy.deploy("web", app.address, deploy_timeout="300ms", check=False)
    assert result.returncode == 1
    assert (
        result.stderr
        == "Error: target failed to become healthy within configured timeout (300ms)\n"
    )
    assert proxy.get("/").status == 404
    assert "web" not in proxy.cli("list", check=True).stdout
    proxy.wait_for_log("Healthcheck failed")


def test_failed_redeploy_keeps_the_old_target(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    second.health_status = 503
    result = proxy.deploy("web", second.address, deploy_timeout="250ms", check=False)
    assert result.returncode == 1
    assert "(250ms)" in result.stderr
    assert proxy.get("/").text == "first"


def test_timeout_message_uses_go_duration_format(proxy: Proxy, app: UpstreamServer) -> None:
    app.health_status = 500
    result = proxy.deploy("web", app.address, deploy_timeout="1.5s", check=False)
    assert (
        result.stderr == "Error: target failed to become healthy within configured timeout (1.5s)\n"
    )


def test_health_check_timeout_counts_as_failure(proxy: Proxy, app: UpstreamServer) -> None:
    # /sleep answers after 1s; with a 100ms check timeout the target never becomes healthy.
    result = proxy.deploy(
        "web",
        app.address,
        health_check_path="/sleep?s=1",
        health_check_timeout="100ms",
        deploy_timeout="600ms",
        check=False,
    )
    assert result.returncode == 1
    failures = [e for e in proxy.logs() if e.get("msg") == "Healthcheck failed"]
    assert any(e.get("error") == "request timed out" for e in failures)


def test_switch_sends_new_requests_to_new_target(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    assert proxy.get("/").text == "first"
    proxy.deploy("web", second.address)
    assert proxy.get("/").text == "second"
    proxy.wait_for_log("Deployed")


def test_in_flight_requests_finish_on_old_target_and_deploy_waits(
    proxy: Proxy, upstream: Upstreams
) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    slow, slow_result = in_background(lambda: proxy.get("/slow"))
    wait_until(first.slow_started.is_set)
    deploy, deploy_result = in_background(
        lambda: proxy.deploy("web", second.address, drain_timeout="20s")
    )
    # The switch happens before the drain: new requests already reach the new target…
    wait_until(lambda: proxy.get("/").text == "second")
    # …while the deploy command is still waiting for the old request.
    assert deploy.is_alive()
    first.release.set()
    slow.join(15)
    deploy.join(15)
    response = slow_result[0]
    assert isinstance(response, Response)
    assert (response.status, response.text) == (200, "first slow done")
    assert deploy_result[0].returncode == 0  # type: ignore[attr-defined]


def test_drain_timeout_gives_504_to_unfinished_requests(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    threads = [in_background(lambda: proxy.get("/slow")) for _ in range(3)]
    wait_until(lambda: len([r for r in first.requests if r.path == "/slow"]) == 3)
    proxy.deploy("web", second.address, drain_timeout="10ms")
    for thread, result in threads:
        thread.join(15)
        response = result[0]
        assert isinstance(response, Response)
        assert response.status == 504
        assert "Gateway Timeout" in response.text
    proxy.wait_for_log("Request cancelled due to draining")


def test_websockets_are_closed_when_drained(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    ws = WebSocketClient(proxy.http_port)
    assert ws.status == 101
    ws.send("hi")
    assert ws.recv() == "first:hi"
    # A long drain timeout: the WebSocket must still be closed at once.
    proxy.deploy("web", second.address, drain_timeout="30s")
    assert ws.recv() is None
    ws.close()


def test_force_installs_without_waiting(proxy: Proxy, upstream: Upstreams) -> None:
    app = upstream("app")
    app.health_status = 500
    result = proxy.deploy("web", app.address, force=True, deploy_timeout="100ms")
    assert result.returncode == 0
    assert proxy.get("/").status == 503  # not healthy yet, so not in rotation
    app.health_status = 200
    wait_until(lambda: proxy.get("/").status == 200)


def test_deploy_does_not_resume_a_paused_service(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    proxy.cli("pause", "web", "--max-pause=50ms", check=True)
    proxy.deploy("web", second.address)
    assert proxy.get("/", method="POST", body=b"x").status == 504
    proxy.cli("resume", "web", check=True)
    assert proxy.get("/").text == "second"


def test_multiple_targets_must_all_be_healthy(proxy: Proxy, upstream: Upstreams) -> None:
    good, bad = upstream("good"), upstream("bad")
    bad.health_status = 500
    result = proxy.deploy("web", good.address, bad.address, deploy_timeout="300ms", check=False)
    assert result.returncode == 1
    assert proxy.get("/").status == 404
