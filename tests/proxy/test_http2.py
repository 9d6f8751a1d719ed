"""HTTP/2 over TLS (ALPN h2), with httpx as an independent client; upstreams keep getting
HTTP/1.1."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from proxy_harness import WAIT, Proxy, UpstreamServer, wait_until
from test_tls import tls_deploy


@pytest.fixture
def h2_client(proxy: Proxy) -> Iterator[httpx.Client]:
    """An HTTP/2-only client that reaches example.com on the proxy's HTTPS port."""
    transport = httpx.HTTPTransport(http1=False, http2=True, verify=_no_verify())
    with httpx.Client(
        transport=transport, base_url=f"https://127.0.0.1:{proxy.https_port}", timeout=WAIT
    ) as client:
        yield client


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


HOST = {"Host": "example.com"}
SNI = {"sni_hostname": "example.com"}


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def get(client: httpx.Client, path: str, **kwargs: Any) -> httpx.Response:
    return client.get(path, headers={**HOST, **kwargs.pop("headers", {})}, extensions=SNI, **kwargs)


def test_h2_is_negotiated_and_the_upstream_gets_http11(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    response = get(h2_client, "/echo?x=1", headers={"Cookie": "a=1", "X-Custom": "yes"})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    seen = json.loads(response.text)
    assert seen["path"] == "/echo?x=1"
    # HTTP/2 field names are lower case; HTTP/1.1 takes them in any case.
    headers = lower_keys(seen["headers"])
    assert headers["host"] == "example.com"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-custom"] == "yes"
    assert headers["cookie"] == "a=1"
    assert "x-request-id" in headers
    entry = proxy.wait_for_log("Request", path="/echo")
    assert (entry["proto"], entry["scheme"], entry["status"]) == ("HTTP/2.0", "https", 200)


def test_request_bodies_with_and_without_a_length(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    sized = h2_client.post("/echo", content=b"x" * 100_000, headers=HOST, extensions=SNI)
    assert json.loads(sized.text)["body"] == "x" * 100_000

    def pieces() -> Iterator[bytes]:
        yield b"first,"
        yield b"second"

    streamed = h2_client.post("/echo", content=pieces(), headers=HOST, extensions=SNI)
    body = json.loads(streamed.text)
    assert body["body"] == "first,second"
    assert lower_keys(body["headers"])["transfer-encoding"] == "chunked"


def test_a_large_response_passes_flow_control(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    response = get(h2_client, "/big?n=5000000")
    assert response.status_code == 200
    assert len(response.content) == 5_000_000


def test_streams_are_multiplexed_on_one_connection(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)

    async def many() -> list[tuple[str, int, bytes]]:
        async with httpx.AsyncClient(
            http1=False,
            http2=True,
            verify=_no_verify(),
            base_url=f"https://127.0.0.1:{proxy.https_port}",
            timeout=WAIT,
        ) as client:
            # /sleep holds each response 0.3 s: sequential streams would take 6 s.
            responses = await asyncio.gather(
                *(
                    client.get(f"/sleep?s=0.3&i={i}", headers=HOST, extensions=SNI)
                    for i in range(20)
                )
            )
        return [(r.http_version, r.status_code, r.content) for r in responses]

    results = asyncio.run(many())
    assert {(v, s) for v, s, _ in results} == {("HTTP/2", 200)}

    def all_logged() -> list[dict[str, Any]] | None:
        entries = [e for e in proxy.request_logs() if e["path"] == "/sleep"]
        return entries if len(entries) == 20 else None

    entries = wait_until(all_logged)
    assert len({e["client_port"] for e in entries}) == 1  # one TCP connection
    # All 20 were in flight at once: the last one started before the first one ended.
    ends = [log_time_ns(e["time"]) for e in entries]
    starts = [end - e["duration"] for end, e in zip(ends, entries, strict=True)]
    assert max(starts) < min(ends)


def log_time_ns(text: str) -> int:
    """``2026-11-28T18:11:48.031456608Z`` as nanoseconds since the epoch."""
    seconds, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.datetime.fromisoformat(seconds).replace(tzinfo=datetime.UTC)
    return int(whole.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0"))


def test_response_headers_lose_hop_by_hop_fields_and_keep_repeats(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    hop = get(h2_client, "/hop")
    assert hop.status_code == 200
    assert "keep-alive" not in hop.headers
    assert "connection" not in hop.headers
    assert hop.headers["x-kept"] == "yes"
    cookies = get(h2_client, "/cookies?set=a=1|b=2")
    assert cookies.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_head_and_error_pages_over_h2(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    head = h2_client.head("/big?n=1000", headers=HOST, extensions=SNI)
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "1000", b"")
    missing = h2_client.get("/", headers={"Host": "other.example"}, extensions=SNI)
    assert missing.status_code == 404
    assert "<html" in missing.text.lower()


def test_http11_clients_still_get_http11_on_the_tls_port(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)
    with httpx.Client(
        verify=_no_verify(), base_url=f"https://127.0.0.1:{proxy.https_port}", timeout=WAIT
    ) as client:
        response = client.get("/", headers=HOST, extensions=SNI)
    assert (response.http_version, response.text) == ("HTTP/1.1", "first")


class RawH2:
    """A bare HTTP/2 client (the h2 library over a TLS socket), for what httpx hides:
    resetting a stream, and sending garbage."""

    def __init__(self, proxy: Proxy) -> None:
        import h2.connection

        ctx = _no_verify()
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", proxy.https_port), timeout=WAIT)
        self.sock = ctx.wrap_socket(raw, server_hostname="example.com")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.h2 = h2.connection.H2Connection()
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def request(self, path: str) -> int:
        stream_id: int = self.h2.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "https")]
        self.h2.send_headers(stream_id, [*headers, (":authority", "example.com")], end_stream=True)
        self.flush()
        return stream_id

    def response(self, stream_id: int) -> tuple[int, bytes]:
        import h2.events

        status, body = 0, b""
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            for event in self.h2.receive_data(data):
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers or [])[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.flush()
                    return status, body
            self.flush()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def slow_stream(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> Iterator[tuple[RawH2, int]]:
    """An HTTP/2 connection with a request to /slow that the upstream holds until
    ``app.release`` is set."""
    tls_deploy(proxy, app, certificate)
    client = RawH2(proxy)
    try:
        slow = client.request("/slow")
        wait_until(app.slow_started.is_set)
        yield client, slow
    finally:
        app.release.set()
        client.close()


def test_a_reset_stream_ends_its_upstream_request_and_the_connection_goes_on(
    proxy: Proxy, slow_stream: tuple[RawH2, int]
) -> None:
    import h2.errors

    client, slow = slow_stream
    client.h2.reset_stream(slow, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    entry = proxy.wait_for_log("Request", path="/slow")
    assert entry["status"] == 499  # as a client that went away over HTTP/1.1
    assert client.response(client.request("/")) == (200, b"first")


def test_garbage_after_negotiating_h2_closes_only_that_connection(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str], h2_client: httpx.Client
) -> None:
    tls_deploy(proxy, app, certificate)
    ctx = _no_verify()
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=WAIT) as raw,
        ctx.wrap_socket(raw, server_hostname="example.com") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")  # not the h2 preface
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    assert received  # the server's SETTINGS, then GOAWAY, then the end of the connection
    proxy.wait_for_log("HTTP/2 protocol error")
    assert get(h2_client, "/").text == "first"


def test_shutdown_lets_an_h2_request_finish(
    proxy: Proxy, app: UpstreamServer, slow_stream: tuple[RawH2, int]
) -> None:
    client, slow = slow_stream
    assert proxy.process is not None
    proxy.process.terminate()  # SIGTERM
    app.release.set()
    assert client.response(slow) == (200, b"first slow done")
    assert proxy.process.wait(timeout=WAIT) == 0
