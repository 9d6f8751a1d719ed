"""Zero failed requests while deploying back and forth under load."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from proxy_harness import Proxy, UpstreamServer

pytestmark = [pytest.mark.proxy, pytest.mark.slow]


def hammer(port: int, stop: threading.Event, results: Counter[str], lock: threading.Lock) -> None:
    """Keep-alive client: one connection, requests back to back, every outcome counted."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/", headers={"Host": "example.com"})
            response = conn.getresponse()
            body = response.read()
            outcome = f"{response.status}" if response.status != 200 else f"200:{body.decode()}"
        except (OSError, http.client.HTTPException) as exc:
            outcome = f"error:{type(exc).__name__}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with lock:
            results[outcome] += 1
    conn.close()


@pytest.mark.parametrize("stop_old_upstream", [False, True])
def test_deploying_under_load_fails_no_request(
    proxy: Proxy, upstream: Callable[[str], UpstreamServer], stop_old_upstream: bool
) -> None:
    current = upstream("v0")
    proxy.deploy("web", current.address, drain_timeout="5s")
    stop, lock = threading.Event(), threading.Lock()
    results: Counter[str] = Counter()
    clients = [
        threading.Thread(target=hammer, args=(proxy.http_port, stop, results, lock), daemon=True)
        for _ in range(4)
    ]
    for client in clients:
        client.start()
    try:
        for version in range(1, 7):
            new = upstream(f"v{version}")
            proxy.deploy("web", new.address, drain_timeout="5s")
            if stop_old_upstream:
                current.stop()  # right after deploy returns, like `docker stop` in Kamal
            current = new
    finally:
        stop.set()
        for client in clients:
            client.join(15)
    failures = {k: v for k, v in results.items() if not k.startswith("200:")}
    assert failures == {}
    served_by = {k.split(":", 1)[1] for k in results}
    assert len(served_by) >= 4  # traffic really moved across versions while it ran
