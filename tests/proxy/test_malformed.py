"""Hostile or broken clients: the proxy answers 400/431 and keeps serving everyone else."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from proxy_harness import WAIT, Proxy, UpstreamServer, raw_exchange, read_until, status_of

pytestmark = pytest.mark.proxy


@pytest.fixture
def served(make_proxy: Callable[..., Proxy], app: UpstreamServer) -> Proxy:
    instance: Proxy = make_proxy(extra_env={"SHIPYARD_PROXY_HEADER_TIMEOUT": "500ms"})
    instance.deploy("web", app.address)
    return instance


def assert_still_serving(proxy: Proxy) -> None:
    assert proxy.get("/").status == 200


def test_bad_request_line(served: Proxy) -> None:
    reply = raw_exchange(served.http_port, b"THIS IS NOT HTTP\r\n\r\n")
    assert status_of(reply) == 400
    served.wait_for_log("Malformed request")
    assert_still_serving(served)


def test_oversized_header_block_is_431(served: Proxy, app: UpstreamServer) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))  # ~100 KiB
    reply = raw_exchange(
        served.http_port, b"GET / HTTP/1.1\r\nHost: example.com\r\n" + headers + b"\r\n"
    )
    assert status_of(reply) == 431
    assert not app.requests
    assert_still_serving(served)


def test_single_huge_header_is_431(served: Proxy) -> None:
    reply = raw_exchange(
        served.http_port,
        b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"a" * 102400 + b"\r\n\r\n",
    )
    assert status_of(reply) == 431


def test_invalid_chunked_encoding_is_400(served: Proxy) -> None:
    reply = raw_exchange(
        served.http_port,
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    )
    assert status_of(reply) == 400
    assert b"400 Bad Request" in reply
    assert_still_serving(served)


def test_invalid_chunked_encoding_is_400_when_buffering(
    make_proxy: Callable[..., Proxy], app: UpstreamServer
) -> None:
    instance: Proxy = make_proxy()
    instance.deploy("web", app.address, buffer_requests=True)
    reply = raw_exchange(
        instance.http_port,
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    )
    assert status_of(reply) == 400


def test_smuggling_with_length_and_chunking_is_400(served: Proxy, app: UpstreamServer) -> None:
    payload = (
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )
    reply = raw_exchange(served.http_port, payload)
    assert status_of(reply) == 400
    assert not any(r.path == "/smuggled" for r in app.requests)
    assert_still_serving(served)


def test_duplicate_content_length_is_400(served: Proxy) -> None:
    reply = raw_exchange(
        served.http_port,
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    assert status_of(reply) == 400


def test_slowloris_is_cut_off(served: Proxy) -> None:
    sock = socket.create_connection(("127.0.0.1", served.http_port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: ")
    # Never finish the headers: the header timeout (500ms here) answers 400 and closes.
    data = read_until(sock)
    sock.close()
    assert status_of(data) == 400
    assert_still_serving(served)


def test_many_idle_connections_do_not_block_service(served: Proxy) -> None:
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", served.http_port), timeout=WAIT))
        for _ in range(5):
            assert_still_serving(served)
    finally:
        for sock in idle:
            sock.close()
    assert_still_serving(served)


def test_extension_methods(served: Proxy, app: UpstreamServer) -> None:
    # Registered extension methods are proxied (metrics count them as OTHER)…
    reply = raw_exchange(
        served.http_port, b"PURGE / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200
    assert app.last().method == "PURGE"
    # …but a made-up token is refused by the parser (a documented difference from Go).
    reply = raw_exchange(served.http_port, b"FOO / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert status_of(reply) == 400


def test_http10_client_gets_a_complete_response(served: Proxy) -> None:
    reply = raw_exchange(
        served.http_port, b"GET /chunked?parts=a,b HTTP/1.0\r\nHost: example.com\r\n\r\n"
    )
    assert status_of(reply) == 200
    assert reply.endswith(b"\r\n\r\nab")


def test_host_header_is_required_once(served: Proxy, app: UpstreamServer) -> None:
    assert status_of(raw_exchange(served.http_port, b"GET / HTTP/1.1\r\n\r\n")) == 400
    two_hosts = b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n"
    assert status_of(raw_exchange(served.http_port, two_hosts)) == 400
    assert not app.requests
    # HTTP/1.0 may omit Host; it routes to the catch-all service.
    assert status_of(raw_exchange(served.http_port, b"GET / HTTP/1.0\r\n\r\n")) == 200
