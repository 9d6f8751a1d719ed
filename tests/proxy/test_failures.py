"""Upstream failures and proxy-generated error pages."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from proxy_harness import WAIT, Proxy, UpstreamServer, read_until, wait_until

pytestmark = pytest.mark.proxy


def test_target_timeout_gives_504(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, target_timeout="200ms")
    response = proxy.get("/sleep?s=3")
    assert response.status == 504
    assert "Gateway Timeout" in response.text
    assert proxy.get("/").status == 200  # the proxy carries on


def test_target_timeout_does_not_count_a_slow_upload(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, target_timeout="300ms", buffer_requests=True)
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nhello")
    time.sleep(0.8)  # longer than the target timeout, spent by the client, not the target
    sock.sendall(b"world")
    data = read_until(sock, b"helloworld")
    sock.close()
    assert data.startswith(b"HTTP/1.1 200")


def test_refused_connection_gives_502(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    app.stop()
    response = proxy.get("/")
    assert response.status == 502
    assert "Bad Gateway" in response.text
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    error = proxy.wait_for_log("Error while proxying")
    assert error["level"] == "ERROR"


def test_upstream_hanging_up_mid_body_closes_the_client(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(b"GET /cut HTTP/1.1\r\nHost: example.com\r\n\r\n")
    data = read_until(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"short")  # what arrived, then the connection was closed
    assert proxy.get("/").status == 200


class OneShotUpstream:
    """Answers the first request on each connection, then drops the connection as soon as
    the next request arrives (a keep-alive timeout racing with reuse)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop_event.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            if b"/up" in data.split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(4096)  # the next request: dropped without an answer

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.listener.close()


def test_stale_pooled_connection_is_retried_for_bodiless_requests(proxy: Proxy) -> None:
    upstream = OneShotUpstream()
    try:
        proxy.deploy("web", upstream.address)
        for _ in range(5):
            response = proxy.get("/")
            assert (response.status, response.text) == (200, "ok")
    finally:
        upstream.close()


def test_stale_pooled_connection_is_not_retried_with_a_body(proxy: Proxy) -> None:
    upstream = OneShotUpstream()
    try:
        proxy.deploy("web", upstream.address)
        assert proxy.get("/", method="POST", body=b"data").status == 200
        # The pooled connection is reused and dropped: a request with a body is not replayed.
        assert proxy.get("/", method="POST", body=b"data").status == 502
    finally:
        upstream.close()


def test_client_disconnect_is_logged_as_499(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n")
    wait_until(app.slow_started.is_set)
    sock.close()
    entry = proxy.wait_for_log("Request", status=499)
    assert entry["path"] == "/slow"


# --- error pages ----------------------------------------------------------------------------


def write_pages(folder: Path, pages: dict[str, str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (folder / name).write_text(text)
    return str(folder)


def test_builtin_error_pages(proxy: Proxy, app: UpstreamServer) -> None:
    not_found = proxy.get("/", host="nowhere.example.com")
    assert not_found.status == 404 and "<title>404" in not_found.text
    proxy.deploy("web", app.address, buffer_requests=True, max_request_body="1")
    too_large = proxy.get("/", method="POST", body=b"way too large")
    assert too_large.status == 413 and "413" in too_large.text
    proxy.cli("stop", "web", check=True)
    stopped = proxy.get("/")
    assert stopped.status == 503 and "<title>503" in stopped.text


def test_custom_error_pages_override_per_status(
    proxy: Proxy, app: UpstreamServer, tmp_path: Path
) -> None:
    pages = write_pages(
        tmp_path / "pages",
        {
            "503.html": "<body>Custom 503: {{ .Message }}</body>",
            "502.html": "<body>Custom 502</body>",
        },
    )
    proxy.deploy("web", app.address, error_pages=pages)
    proxy.cli("stop", "web", "--message=Gone to <lunch>", check=True)
    response = proxy.get("/")
    assert response.status == 503
    assert response.text == "<body>Custom 503: Gone to &lt;lunch&gt;</body>"
    assert response.header("Content-Type") == "text/html; charset=utf-8"
    proxy.cli("resume", "web", check=True)
    app.stop()
    assert proxy.get("/").text == "<body>Custom 502</body>"


def test_custom_pages_fall_back_to_builtin(
    proxy: Proxy, app: UpstreamServer, tmp_path: Path
) -> None:
    pages = write_pages(tmp_path / "pages", {"404.html": "<body>Custom 404</body>"})
    proxy.deploy("web", app.address, host="example.com", error_pages=pages)
    proxy.cli("pause", "web", "--max-pause=50ms", check=True)
    response = proxy.get("/")
    assert response.status == 504 and "Gateway Timeout" in response.text
    # An unrouted 404 always uses the built-in page.
    assert "Custom" not in proxy.get("/", host="elsewhere.com").text


def test_bad_error_pages_fail_the_deploy(proxy: Proxy, app: UpstreamServer, tmp_path: Path) -> None:
    proxy.deploy("web", app.address)
    empty = write_pages(tmp_path / "empty", {"readme.txt": "no html here"})
    broken = write_pages(tmp_path / "broken", {"500.html": "<body>{% if %}</body>"})
    for folder in (empty, broken, str(tmp_path / "missing")):
        result = proxy.deploy("web", app.address, error_pages=folder, check=False)
        assert (result.returncode, result.stderr) == (1, "Error: unable to load error pages\n")
    assert proxy.get("/").text == "first"  # the failed deploys changed nothing
