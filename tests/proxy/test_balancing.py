"""Several targets: round-robin, continuous health checks, readers, writer affinity."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, UpstreamServer, WebSocketClient, wait_until

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def test_round_robin_over_targets(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", f"{first.address},{second.address}")
    answers = [proxy.get("/").text for _ in range(4)]
    assert sorted(answers) == ["first", "first", "second", "second"]
    assert answers[0] != answers[1]


def test_unhealthy_target_leaves_the_rotation_and_returns(
    proxy: Proxy, upstream: Upstreams
) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address, second.address)
    second.health_status = 500
    wait_until(
        lambda: any(
            e.get("msg") == "Target health updated" and e.get("state") == "unhealthy"
            for e in proxy.logs()
        )
    )
    assert {proxy.get("/").text for _ in range(6)} == {"first"}
    second.health_status = 200
    wait_until(lambda: {proxy.get("/").text for _ in range(4)} == {"first", "second"})


def test_no_healthy_target_is_503(proxy: Proxy, upstream: Upstreams) -> None:
    first, second = upstream("first"), upstream("second")
    proxy.deploy("web", first.address, second.address)
    first.health_status = second.health_status = 500
    wait_until(lambda: proxy.get("/").status == 503)


def test_reads_go_to_readers_and_writes_to_writers(proxy: Proxy, upstream: Upstreams) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address, read_target=reader.address)
    assert proxy.get("/").text == "reader"
    assert proxy.get("/", method="HEAD").status == 200
    assert reader.last().method == "HEAD"
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert proxy.get("/", method=method, body=b"").text == "writer", method


def test_websockets_go_to_writers_unless_allowed(proxy: Proxy, upstream: Upstreams) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address, read_target=reader.address)
    ws = WebSocketClient(proxy.http_port)
    ws.send("x")
    assert ws.recv() == "writer:x"
    ws.close()
    proxy.deploy("web", writer.address, read_target=reader.address, read_target_websockets=True)
    ws = WebSocketClient(proxy.http_port)
    ws.send("x")
    assert ws.recv() == "reader:x"
    ws.close()


def test_writer_affinity_cookie(proxy: Proxy, upstream: Upstreams) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address, read_target=reader.address, writer_affinity_timeout="5s")
    response = proxy.get("/", method="POST", body=b"data")
    cookie = response.header("Set-Cookie")
    assert cookie is not None
    match = re.match(r"kamal-writer=(\d+); Path=/; Expires=([^;]+); HttpOnly$", cookie)
    assert match, cookie
    assert int(match.group(1)) > time.time() * 1000
    assert proxy.get("/").header("Set-Cookie") is None  # reads get no cookie
    with_cookie = proxy.get("/", headers={"Cookie": f"kamal-writer={match.group(1)}"})
    assert with_cookie.text == "writer"
    expired = proxy.get("/", headers={"Cookie": "kamal-writer=1000"})
    assert expired.text == "reader"


def test_no_affinity_cookie_without_readers_or_with_zero_timeout(
    proxy: Proxy, upstream: Upstreams
) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address)
    assert proxy.get("/", method="POST", body=b"").header("Set-Cookie") is None
    proxy.deploy("web", writer.address, read_target=reader.address, writer_affinity_timeout="0")
    assert proxy.get("/", method="POST", body=b"").header("Set-Cookie") is None


def test_upstream_can_opt_out_of_affinity(proxy: Proxy, upstream: Upstreams) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address, read_target=reader.address)
    response = proxy.get("/headers?X-Writer-Affinity=false", method="POST", body=b"")
    assert response.header("Set-Cookie") is None
    assert response.header("X-Writer-Affinity") is None


def test_kamal_target_header(proxy: Proxy, upstream: Upstreams) -> None:
    writer, reader = upstream("writer"), upstream("reader")
    proxy.deploy("web", writer.address, read_target=reader.address, forward_headers=False)
    proxy.get("/echo", headers={"X-Kamal-Target": "existing"})
    assert reader.last().headers["X-Kamal-Target"] == reader.address
    proxy.get("/echo", method="POST", body=b"")
    assert writer.last().headers["X-Kamal-Target"] == writer.address
    proxy.deploy("web", writer.address, read_target=reader.address, forward_headers=True)
    proxy.get("/echo", method="POST", body=b"", headers={"X-Kamal-Target": "existing"})
    assert writer.last().headers["X-Kamal-Target"] == f"existing, {writer.address}"


def test_list_shows_writers_then_readers(proxy: Proxy, upstream: Upstreams) -> None:
    one, two, three = upstream("one"), upstream("two"), upstream("three")
    proxy.deploy("web", one.address, two.address, read_target=three.address)
    out = proxy.cli("list", check=True).stdout
    assert f"{one.address},{two.address},{three.address}" in out
