"""The state file: written after every change, restored at start, robust to damage."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, UpstreamServer

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def test_state_is_written_in_kamal_proxy_format(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.wait_for_log("No previous state to restore")
    proxy.deploy(
        "web", app.address, host="example.com", target_timeout="3s", health_check_path="/up"
    )
    state = json.loads(proxy.state_file.read_text())
    assert isinstance(state, list) and len(state) == 1
    service = state[0]
    assert service["name"] == "web"
    assert service["options"]["hosts"] == ["example.com"]
    assert service["options"]["path_prefixes"] == ["/"]
    assert service["target_options"]["response_timeout"] == 3_000_000_000  # Go nanoseconds
    assert service["target_options"]["health_check_config"]["interval"] == 100_000_000
    assert service["active_targets"] == [app.address]
    assert service["pause_controller"]["state"] == 0
    assert service["rollout_targets"] is None
    leftovers = [p.name for p in proxy.state_file.parent.iterdir() if p.name != "kamal-proxy.state"]
    assert leftovers == []  # written via temp file + rename; nothing left behind


def test_state_follows_every_change(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    proxy.cli("rollout", "deploy", "web", f"--target={second.address}", check=True)
    proxy.cli("rollout", "set", "web", "--percent=20", "--list=first", check=True)
    proxy.cli("stop", "web", "--message=later", check=True)
    service = json.loads(proxy.state_file.read_text())[0]
    assert service["pause_controller"]["state"] == 2
    assert service["pause_controller"]["stop_message"] == "later"
    assert service["rollout_targets"] == [second.address]
    assert service["rollout_controller"]["percentage"] == 20
    assert service["rollout_controller"]["allowlist"] == ["first"]
    proxy.cli("remove", "web", check=True)
    assert json.loads(proxy.state_file.read_text()) == []


def test_restart_restores_routes_without_redeploy(proxy: Proxy, upstream: Upstreams) -> None:
    first, second, third = upstream("first"), upstream("second"), upstream("third")
    proxy.deploy("default", first.address)
    proxy.deploy("api", second.address, host="other.example.com", path_prefix="/api")
    proxy.deploy("multi", third.address, first.address, host="multi.example.com")
    # Restored targets are treated as healthy at once: even a failing health check
    # endpoint doesn't keep a restored single-target service out of rotation.
    second.health_status = 500
    proxy.restart()
    proxy.wait_for_log("Restored saved state")
    assert proxy.get("/", host="something.example.com").text == "first"
    assert proxy.get("/api/x", host="other.example.com").text == "second"
    assert {proxy.get("/", host="multi.example.com").text for _ in range(4)} == {"first", "third"}
    assert proxy.get("/", host="other.example.com").status == 404


def test_restart_restores_pause_and_rollout(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address)
    proxy.cli("rollout", "deploy", "web", f"--target={second.address}", check=True)
    proxy.cli("rollout", "set", "web", "--list=vip", check=True)
    proxy.cli("stop", "web", "--message=Back soon", check=True)
    proxy.restart()
    response = proxy.get("/")
    assert response.status == 503 and "Back soon" in response.text
    proxy.cli("resume", "web", check=True)
    assert proxy.get("/", headers={"Cookie": "kamal-rollout=vip"}).text == "second"
    assert proxy.get("/").text == "first"


def test_corrupt_state_file_is_logged_and_ignored(
    make_proxy: Callable[..., Proxy], app: UpstreamServer
) -> None:
    instance = make_proxy(start=False)
    instance.state_file.parent.mkdir(parents=True)
    instance.state_file.write_text('[{"name": "web", "options": ')
    instance.start()
    entry = instance.wait_for_log("Failed to decode saved state")
    assert entry["level"] == "ERROR"
    assert instance.get("/").status == 404
    instance.deploy("web", app.address)  # and it works normally afterwards
    assert instance.get("/").status == 200


def test_partly_bad_state_restores_what_it_can(
    make_proxy: Callable[..., Proxy], upstream: Upstreams
) -> None:
    good = upstream("good")
    instance = make_proxy(start=False)
    instance.state_file.parent.mkdir(parents=True)
    services = [
        {
            "name": "broken-cert",
            "options": {
                "hosts": ["secure.example.com"],
                "tls_enabled": True,
                "tls_certificate_path": "/missing.pem",
                "tls_private_key_path": "/missing.key",
            },
            "target_options": {},
            "active_targets": ["127.0.0.1:9"],
        },
        {
            "name": "bad-target",
            "options": {"hosts": ["bad.example.com"]},
            "target_options": {},
            "active_targets": ["http://nope"],
        },
        "not even an object",
        {
            "name": "good",
            "options": {"hosts": ["good.example.com"]},
            "target_options": {},
            "active_targets": [good.address],
        },
    ]
    instance.state_file.write_text(json.dumps(services))
    instance.start()
    failures = [e for e in instance.logs() if e.get("msg") == "Failed to restore service"]
    assert {e.get("service") for e in failures} == {"broken-cert", "bad-target", None}
    assert instance.get("/", host="good.example.com").text == "good"
    assert instance.get("/", host="bad.example.com").status == 404


def test_legacy_state_format(make_proxy: Callable[..., Proxy], app: UpstreamServer) -> None:
    instance = make_proxy(start=False)
    instance.state_file.parent.mkdir(parents=True)
    legacy = [
        {
            "name": "my-app",
            "hosts": ["app.example.com"],
            "active_target": app.address,
            "options": {},
            "target_options": {"response_timeout": 3000000000},
        }
    ]
    instance.state_file.write_text(json.dumps(legacy))
    instance.start()
    assert instance.get("/", host="app.example.com").text == "first"
    out = instance.cli("list", check=True).stdout
    assert "my-app" in out and app.address in out


def test_failed_redeploy_keeps_state_file(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, host="example.com")
    before = proxy.state_file.read_text()
    result = proxy.deploy(
        "web",
        app.address,
        host="example.com",
        tls=True,
        tls_certificate_path="/missing.pem",
        tls_private_key_path="/missing.key",
        check=False,
    )
    assert result.stderr == "Error: unable to load certificate\n"
    assert proxy.state_file.read_text() == before
    proxy.restart()
    assert proxy.get("/", method="POST", body=b"").text == "first"
