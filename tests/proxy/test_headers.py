"""Headers added, kept, replaced or removed on the way through."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest
from proxy_harness import Proxy, UpstreamServer, raw_exchange

pytestmark = pytest.mark.proxy

CLIENT_FORWARDED = {
    "X-Forwarded-For": "10.10.10.10",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "untrusted.example.com",
    "Forwarded": "for=10.10.10.10",
    "X-Custom": "kept",
}


def test_forwarded_headers_are_replaced_when_not_trusted(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, forward_headers=False)
    proxy.get("/", host="example.com", headers=CLIENT_FORWARDED)
    seen = app.last().headers
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == "example.com"
    assert "Forwarded" not in seen
    assert seen["X-Custom"] == "kept"


def test_forwarded_headers_are_extended_when_trusted(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, forward_headers=True)
    proxy.get("/", host="example.com", headers=CLIENT_FORWARDED)
    seen = app.last().headers
    assert seen["X-Forwarded-For"] == "10.10.10.10, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Host"] == "untrusted.example.com"
    proxy.get("/", host="example.com")
    seen = app.last().headers
    assert (seen["X-Forwarded-For"], seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"]) == (
        "127.0.0.1",
        "http",
        "example.com",
    )


def test_forward_headers_default_is_on_without_tls(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.get("/", headers={"X-Forwarded-For": "10.1.1.1"})
    assert app.last().headers["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"


def test_client_ip_header(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, client_ip_header="True-Client-IP", forward_headers=True)
    proxy.get("/", headers={"True-Client-IP": "203.0.113.9", "X-Forwarded-For": "6.6.6.6"})
    seen = app.last().headers
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["True-Client-IP"] == "203.0.113.9"
    proxy.get("/", headers={"X-Forwarded-For": "6.6.6.6"})
    assert app.last().headers["X-Forwarded-For"] == "6.6.6.6, 127.0.0.1"


def test_request_id_is_generated_or_preserved(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    response = proxy.get("/")
    generated = app.last().headers["X-Request-ID"]
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", generated
    )
    assert response.header("X-Request-ID") is None  # not echoed to the client
    proxy.get("/")
    assert app.last().headers["X-Request-ID"] != generated
    proxy.get("/", headers={"X-Request-ID": "1234"})
    assert app.last().headers["X-Request-ID"] == "1234"


def test_request_start_is_added_or_preserved(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    before = int(time.time() * 1000)
    proxy.get("/")
    value = app.last().headers["X-Request-Start"]
    match = re.fullmatch(r"t=(\d+)", value)
    assert match and before - 1000 <= int(match.group(1)) <= int(time.time() * 1000) + 1000
    proxy.get("/", headers={"X-Request-Start": "t=1234"})
    assert app.last().headers["X-Request-Start"] == "t=1234"


def test_host_is_preserved(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    proxy.get("/", host="custom.example.com")
    assert app.last().headers["Host"] == "custom.example.com"


def test_hop_by_hop_request_headers_are_removed(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    raw = (
        b"GET /echo HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nTE: gzip\r\nTrailer: X-T\r\nProxy-Authorization: Basic eA==\r\n"
        b"Proxy-Connection: keep-alive\r\nX-End-To-End: yes\r\n\r\n"
    )
    raw_exchange(proxy.http_port, raw, read_all=False, timeout=5)
    seen = {k.lower() for k in app.last().headers}
    for hop in ("keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert hop not in seen, hop
    assert "x-end-to-end" in seen


def test_hop_by_hop_response_headers_are_removed(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    response = proxy.get("/hop")
    assert response.header("Keep-Alive") is None
    assert response.header("Proxy-Authenticate") is None
    assert response.header("X-Kept") == "yes"
    assert response.text == "hop"


def test_upstream_error_responses_pass_through_untouched(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    response = proxy.get("/status?code=418&body=teapot&type=text/plain")
    assert (response.status, response.text, response.header("Content-Type")) == (
        418,
        "teapot",
        "text/plain",
    )


def test_cookie_paths_are_scoped_under_the_prefix(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy(
        "api", app.address, host="example.com", path_prefix="/api", scope_cookie_paths=True
    )
    cookies = "a=1; Path=/|b=2; Path=/admin|c=3|d=4; Domain=other.com; Path=/x|e=5; Domain=example.com; Path=/y"
    response = proxy.get(f"/api/cookies?set={quote(cookies)}")
    values = response.headers.get_all("Set-Cookie") or []
    assert "a=1; Path=/api" in values
    assert "b=2; Path=/api/admin" in values
    assert "c=3; Path=/api" in values
    assert "d=4; Domain=other.com; Path=/x" in values
    assert any(v.startswith("e=5") and "Path=/api/y" in v for v in values)


def test_cookie_paths_untouched_without_scoping(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("api", app.address, path_prefix="/api")
    response = proxy.get("/api/cookies?set=" + quote("a=1; Path=/"))
    assert response.headers.get_all("Set-Cookie") == ["a=1; Path=/"]
