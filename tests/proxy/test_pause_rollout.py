"""Pause, stop, resume, and the cookie-based rollout split."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, Response, UpstreamServer, fnv1a_32, wait_until

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def background_get(
    proxy: Proxy, path: str = "/", **kwargs: object
) -> tuple[threading.Thread, list[Response]]:
    out: list[Response] = []
    thread = threading.Thread(target=lambda: out.append(proxy.get(path, **kwargs)), daemon=True)
    thread.start()
    return thread, out


# --- pause / stop / resume -----------------------------------------------------------------


def test_paused_requests_wait_until_resume(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", check=True)
    thread, out = background_get(proxy)
    wait_until(lambda: "Service paused" in proxy.log_messages())
    thread.join(0.3)
    assert thread.is_alive() and not app.requests  # held in the proxy
    proxy.cli("resume", "web", check=True)
    thread.join(15)
    assert out[0].status == 200 and out[0].text == "first"


def test_pause_expires_with_504(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", "--max-pause=100ms", check=True)
    response = proxy.get("/")
    assert response.status == 504
    assert "Gateway Timeout" in response.text
    proxy.wait_for_log("Rejecting request due to expired pause")


def test_stop_serves_503_with_escaped_message(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("stop", "web", "--message=Back <soon> & sound", check=True)
    response = proxy.get("/")
    assert response.status == 503
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    assert "Service Temporarily Unavailable" in response.text
    assert "Back &lt;soon&gt; &amp; sound" in response.text
    proxy.cli("resume", "web", check=True)
    assert proxy.get("/").status == 200


def test_stop_without_message_shows_default_text(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("stop", "web", check=True)
    assert "temporarily unavailable" in proxy.get("/").text


def test_stop_rejects_requests_already_waiting(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", check=True)
    thread, out = background_get(proxy)
    thread.join(0.3)
    proxy.cli("stop", "web", "--message=Back in 15 mins!", check=True)
    thread.join(15)
    assert out[0].status == 503
    assert "Back in 15 mins!" in out[0].text


def test_health_check_path_answers_while_paused_or_stopped(
    proxy: Proxy, app: UpstreamServer
) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", "--max-pause=50ms", check=True)
    up = proxy.get("/up")
    assert (up.status, up.body) == (200, b"")
    assert proxy.get("/up?check=1", method="HEAD").status == 200
    assert proxy.get("/other").status == 504
    proxy.cli("stop", "web", check=True)
    assert proxy.get("/up").status == 200
    assert proxy.get("/other").status == 503
    proxy.cli("resume", "web", check=True)
    assert proxy.get("/up").body == b"ok"  # proxied again


def test_health_check_short_circuit_uses_the_routed_path(proxy: Proxy, upstream: Upstreams) -> None:
    api, admin = upstream("api"), upstream("admin")
    proxy.deploy("api", api.address, path_prefix="/api")
    admin.health_path = "/admin/up"
    proxy.deploy(
        "admin",
        admin.address,
        path_prefix="/admin",
        strip_path_prefix=False,
        health_check_path="/admin/up",
    )
    for name in ("api", "admin"):
        proxy.cli("pause", name, "--max-pause=50ms", check=True)
    assert proxy.get("/api/up").status == 200
    assert proxy.get("/admin/up").status == 200
    assert proxy.get("/api/other").status == 504


def test_pause_drains_in_flight_requests(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    thread, out = background_get(proxy, "/slow")
    wait_until(app.slow_started.is_set)
    proxy.cli("pause", "web", "--drain-timeout=50ms", check=True)
    thread.join(15)
    assert out[0].status == 504
    proxy.wait_for_log("Service drained")
    proxy.cli("resume", "web", check=True)
    assert proxy.get("/").status == 200


def test_pause_commands_for_unknown_service(proxy: Proxy) -> None:
    for command in ("pause", "stop", "resume"):
        result = proxy.cli(command, "ghost")
        assert (result.returncode, result.stderr) == (1, "Error: service not found\n")


def test_list_shows_service_state(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.cli("pause", "web", check=True)
    assert "\x1b[mpaused\x1b[0m" in proxy.cli("list", check=True).stdout
    proxy.cli("stop", "web", check=True)
    assert "\x1b[mstopped\x1b[0m" in proxy.cli("list", check=True).stdout
    proxy.cli("resume", "web", check=True)
    proxy.cli("resume", "web", check=True)  # resuming a running service is fine
    assert "\x1b[mrunning\x1b[0m" in proxy.cli("list", check=True).stdout


# --- rollout ------------------------------------------------------------------------------


def test_rollout_needs_an_existing_service_and_target(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    result = proxy.cli("rollout", "deploy", "web", f"--target={second.address}")
    assert result.stderr == "Error: service not found\n"
    proxy.deploy("web", first.address)
    result = proxy.cli("rollout", "set", "web", "--percent=10")
    assert result.stderr == "Error: rollout target not set\n"


def test_rollout_allowlist(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    proxy.cli("rollout", "deploy", "web", f"--target={second.address}", check=True)
    cookie = {"Cookie": "kamal-rollout=1"}
    assert proxy.get("/", headers=cookie).text == "first"  # no split rule yet
    proxy.cli("rollout", "set", "web", "--list=1", check=True)
    assert proxy.get("/", headers=cookie).text == "second"
    assert proxy.get("/", headers={"Cookie": "kamal-rollout=2"}).text == "first"
    assert proxy.get("/").text == "first"  # no cookie, never rolled out
    proxy.cli("rollout", "set", "web", "--list=2", check=True)
    assert proxy.get("/", headers=cookie).text == "first"
    proxy.cli("rollout", "stop", "web", check=True)
    assert proxy.get("/", headers={"Cookie": "kamal-rollout=2"}).text == "first"
    proxy.wait_for_log("Stopped rollout")


def test_rollout_percentage_uses_fnv1a(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    proxy.cli("rollout", "deploy", "web", f"--target={second.address}", check=True)
    proxy.cli("rollout", "set", "web", "--percent=60", "--list=special", check=True)
    split = 60 / 100 * 4294967295
    values = [f"{i:05d}" for i in range(40)]
    for value in values:
        expected = "second" if fnv1a_32(value.encode()) <= split else "first"
        assert proxy.get("/", headers={"Cookie": f"a=b; kamal-rollout={value}"}).text == expected, (
            value
        )
    assert proxy.get("/", headers={"Cookie": "kamal-rollout=special"}).text == "second"


def test_redeploy_keeps_rollout(proxy: Proxy, upstream: Upstreams) -> None:
    first, second, third = upstream("first"), upstream("second"), upstream("third")
    proxy.deploy("web", first.address)
    proxy.cli("rollout", "deploy", "web", f"--target={second.address}", check=True)
    proxy.cli("rollout", "set", "web", "--list=vip", check=True)
    proxy.deploy("web", third.address)
    assert proxy.get("/", headers={"Cookie": "kamal-rollout=vip"}).text == "second"
    assert proxy.get("/").text == "third"
