"""Request and response bodies: streaming, chunking, SSE, buffering, size limits."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from proxy_harness import WAIT, Proxy, UpstreamServer, WebSocketClient, read_until

pytestmark = pytest.mark.proxy


def open_stream(proxy: Proxy, path: str) -> tuple[socket.socket, bytes]:
    """Send a GET and return the socket and everything received up to the first body bytes."""
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received or received.endswith(b"\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return sock, received


def test_chunked_request_body_is_forwarded(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    body = b"hello chunked world"
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 5]), body[i : i + 5]) for i in range(0, len(body), 5)
    )
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    data = read_until(sock, b'"}')
    sock.close()
    assert b" 200 " in data.split(b"\r\n")[0]
    assert app.last().body == body


def test_large_streamed_upload_and_download(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    body = bytes(range(256)) * 8192  # 2 MiB
    response = proxy.get("/echo", method="POST", body=body)
    assert response.status == 200
    assert app.last().body == body
    big = proxy.get("/big?n=3000000")
    assert len(big.body) == 3_000_000


def test_a_response_that_outran_its_client_leaves_a_usable_pooled_connection(
    proxy: Proxy, app: UpstreamServer
) -> None:
    # A large response can complete while the client's socket is full and reading from
    # the upstream is paused; the connection goes back to the pool and must not stay
    # paused, or the next request on it never gets its response. The timing varies from
    # run to run, so repeat the pair until it has had plenty of chances to happen.
    proxy.deploy("web", app.address)
    body = bytes(range(256)) * 8192  # 2 MiB, echoed back as about 8.5 MB of JSON
    for _ in range(50):
        assert proxy.get("/echo", method="POST", body=body).status == 200
        small = proxy.get("/big?n=10", timeout=5)
        assert small.body == b"x" * 10


def test_chunked_response_passes_through(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    response = proxy.get("/chunked?parts=alpha,beta,gamma")
    assert response.text == "alphabetagamma"
    assert response.header("Transfer-Encoding") == "chunked"


def test_close_delimited_response_is_rechunked(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    response = proxy.get("/eof")
    assert (response.status, response.text) == (200, "until-close")


@pytest.mark.parametrize("buffered", [False, True])
def test_sse_streams_before_the_response_ends(
    proxy: Proxy, app: UpstreamServer, buffered: bool
) -> None:
    flags = {"buffer_responses": True, "buffer_requests": True} if buffered else {}
    proxy.deploy("web", app.address, **flags)
    sock, received = open_stream(proxy, "/sse")
    received = read_until(sock, b"data: hello", received)
    assert b"data: hello" in received
    assert b"data: bye" not in received  # the upstream is still holding the stream open
    app.release.set()
    received = read_until(sock, b"data: bye", received)
    assert b"data: bye" in received
    sock.close()


def test_sse_with_charset_streams_too(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, buffer_responses=True)
    sock, received = open_stream(proxy, "/sse?type=text/event-stream;%20charset=utf-8")
    assert b"data: hello" in read_until(sock, b"data: hello", received)
    app.release.set()
    sock.close()


def test_chunked_response_streams_unbuffered(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    sock, received = open_stream(proxy, "/chunked?parts=first,second&hold=30")
    received = read_until(sock, b"first", received)
    assert b"second" not in received
    app.release.set()
    assert b"second" in read_until(sock, b"second", received)
    sock.close()


def test_buffered_response_waits_for_the_whole_body(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, buffer_responses=True)
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=0.5)
    sock.sendall(b"GET /length?code=302&location=/target HTTP/1.1\r\nHost: example.com\r\n\r\n")
    with pytest.raises(TimeoutError):
        sock.recv(100)  # nothing is sent while the upstream is mid-body
    app.release.set()
    sock.settimeout(WAIT)
    data = read_until(sock, b"hello world")
    assert data.startswith(b"HTTP/1.1 302")
    assert b"Location: /target" in data
    sock.close()


def test_unbuffered_response_is_sent_as_it_arrives(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    sock, received = open_stream(proxy, "/length")
    assert b"hello " in read_until(sock, b"hello ", received)
    app.release.set()
    sock.close()


def test_buffered_request_spills_to_disk_intact(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy(
        "web", app.address, buffer_requests=True, buffer_memory="5", max_request_body="2048"
    )
    body = b"hello, world!"  # 13 bytes: 5 in memory, the rest on disk
    response = proxy.get("/echo", method="POST", body=body)
    assert response.status == 200
    assert app.last().body == body
    assert app.last().headers["Content-Length"] == "13"


def test_request_over_the_limit_is_413(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, buffer_requests=True, buffer_memory="4", max_request_body="8")
    assert proxy.get("/echo", method="POST", body=b"12345678").status == 200  # exactly at the limit
    response = proxy.get("/echo", method="POST", body=b"x" * 35)
    assert response.status == 413
    assert "Content Too Large" in response.text
    assert [r.body for r in app.requests] == [b"12345678"]


def test_chunked_request_over_the_limit_is_413(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, buffer_requests=True, max_request_body="10")
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    )
    data = read_until(sock, b"</html>")
    sock.close()
    assert data.startswith(b"HTTP/1.1 413")


def test_response_over_the_limit_is_500(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy(
        "web", app.address, buffer_responses=True, buffer_memory="5", max_response_body="20"
    )
    ok = proxy.get("/big?n=11")  # spilled to disk, still under the limit
    assert (ok.status, ok.body) == (200, b"x" * 11)
    response = proxy.get("/big?n=39")
    assert response.status == 500
    assert "<h1>500 Internal Server Error</h1>" in response.text
    proxy.wait_for_log("Response exceeded max response limit")


def test_limits_apply_only_to_the_buffered_direction(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address, buffer_requests=True, max_request_body="10")
    assert proxy.get("/big?n=1000").status == 200
    proxy.deploy("web", app.address, buffer_responses=True, max_response_body="10")
    assert proxy.get("/echo", method="POST", body=b"y" * 1000).status == 500  # echo is > 10 bytes
    assert proxy.get("/status?code=200&body=short", method="POST", body=b"y" * 1000).status == 200


def test_buffered_request_reaches_upstream_only_when_complete(
    proxy: Proxy, app: UpstreamServer
) -> None:
    proxy.deploy("web", app.address, buffer_requests=True)
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nhello")
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(100)
    assert not app.requests  # the upstream has seen nothing yet
    sock.settimeout(WAIT)
    sock.sendall(b"world")
    data = read_until(sock, b"}")
    sock.close()
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["body"] == "helloworld"


def test_websocket_echo_with_buffering(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy(
        "web",
        app.address,
        buffer_requests=True,
        buffer_responses=True,
        buffer_memory="1",
        max_request_body="2",
        max_response_body="2",
    )
    ws = WebSocketClient(proxy.http_port)
    assert ws.status == 101
    for message in ("one", "a longer message than the limits"):
        ws.send(message)
        assert ws.recv() == f"first:{message}"
    ws.close()


def test_websocket_upgrade_passes_through(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    ws = WebSocketClient(proxy.http_port)
    assert b"Upgrade: websocket" in ws.handshake
    assert b"Sec-WebSocket-Accept:" in ws.handshake
    ws.send("ping")
    assert ws.recv() == "first:ping"
    ws.close()
    proxy.wait_for_log("Request", status=101)


def test_head_request_has_no_body(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    raw = b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(raw)
    data = read_until(sock, b"\r\n\r\nfirst")
    sock.close()
    first, second = data.split(b"HTTP/1.1 200", 2)[1:]
    assert b"Content-Length: 5" in first and first.endswith(b"\r\n\r\n")
    assert second.endswith(b"first")


def test_pipelined_requests_are_answered_in_order(proxy: Proxy, app: UpstreamServer) -> None:
    proxy.deploy("web", app.address)
    raw = b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: example.com\r\n\r\n" % i for i in range(5))
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
    sock.sendall(raw)
    data = read_until(sock, lambda received: received.count(b'"name"') >= 5)
    sock.close()
    order = [
        int(part.split(b"n=")[1].split(b'"')[0]) for part in data.split(b'"path": "/echo?')[1:]
    ]
    assert order == [0, 1, 2, 3, 4]


class RecordingUpstream:
    """A raw upstream that keeps every byte it receives and answers each chunked request."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = b""
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += data
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, rest = pending.partition(b"\r\n\r\n")
                    if b"chunked" in head.lower():
                        if b"0\r\n\r\n" not in rest:
                            break
                        _, _, pending = rest.partition(b"0\r\n\r\n")
                    else:
                        pending = rest
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("buffered", [False, True])
def test_pipelined_chunked_uploads(proxy: Proxy, buffered: bool) -> None:
    upstream = RecordingUpstream()
    try:
        proxy.deploy("web", upstream.address, buffer_requests=buffered)
        one = b"POST /one HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n"
        two = b"POST /two HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"
        sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=WAIT)
        sock.sendall(one + two)
        data = read_until(sock, lambda received: received.count(b"\r\n\r\nok") >= 2)
        sock.close()
        assert data.count(b"HTTP/1.1 200") == 2
        with upstream.lock:
            received = upstream.received
        # Exactly two requests reached the upstream, each body framed once: nothing extra
        # (such as a second chunked terminator) was written after them.
        assert received.count(b"POST /") == 2
        ends = received.count(b"0\r\n\r\n")
        assert ends == (0 if buffered else 2)
        assert received.endswith(b"0\r\n\r\n" if not buffered else b"two")
    finally:
        upstream.close()
