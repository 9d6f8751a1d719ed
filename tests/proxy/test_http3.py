"""HTTP/3 with ``run --http3`` (kamal-proxy's TestServer_DeployingHTTPS and more): QUIC on
the HTTPS port, Alt-Svc on TCP responses, certificates by SNI, and the shared request
pipeline."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from h3_client import H3Response, h3_get, h3_requests
from pebble_harness import Pebble
from proxy_harness import WAIT, Proxy, UpstreamServer, request, wait_until, write_self_signed
from test_tls import tls_deploy

MakeProxy = Callable[..., Proxy]


@pytest.fixture
def h3_proxy(make_proxy: MakeProxy) -> Proxy:
    return make_proxy(extra_args=["--http3"])


def no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tcp_response(proxy: Proxy, http2: bool) -> httpx.Response:
    with httpx.Client(http1=not http2, http2=http2, verify=no_verify(), timeout=WAIT) as client:
        return client.get(
            f"https://127.0.0.1:{proxy.https_port}/",
            headers={"Host": "example.com"},
            extensions={"sni_hostname": "example.com"},
        )


def test_http3_answers_and_tcp_responses_advertise_it(
    h3_proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(h3_proxy, app, certificate)
    advertised = f'h3=":{h3_proxy.https_port}"; ma=2592000'
    for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
        response = tcp_response(h3_proxy, http2)
        assert (response.http_version, response.text) == (version, "first")
        assert response.headers["alt-svc"] == advertised
    quic = h3_get(h3_proxy.https_port, "/")
    assert (quic.status, quic.text) == (200, "first")
    assert "alt-svc" not in quic.headers
    protos = [e["proto"] for e in h3_proxy.request_logs()]
    assert protos == ["HTTP/1.1", "HTTP/2.0", "HTTP/3.0"]


def test_without_http3_nothing_listens_on_udp_and_nothing_is_advertised(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)
    for http2 in (False, True):
        assert "alt-svc" not in tcp_response(proxy, http2).headers
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.bind(("::", proxy.https_port))  # free


def test_a_busy_udp_port_is_a_startup_error(make_proxy: MakeProxy) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.bind(("::", 0))
        port = udp.getsockname()[1]
        proxy = make_proxy(start=False, https_port=port, extra_args=["--http3"])
        proxy.start(wait=False)
        assert proxy.process is not None
        assert proxy.process.wait(timeout=WAIT) == 1
    wait_until(lambda: proxy.stderr_lines)
    assert proxy.stderr_lines[-1] == f"Error: listen udp :{port}: bind: address already in use"


def test_the_certificate_follows_the_server_name(
    h3_proxy: Proxy,
    upstream: Callable[[str], UpstreamServer],
    certificate: tuple[str, str],
    tmp_path: Path,
) -> None:
    first, second = upstream("first"), upstream("second")
    tls_deploy(h3_proxy, first, certificate)
    other_cert, other_key = write_self_signed(tmp_path / "other", ["other.test"])
    h3_proxy.deploy(
        "other",
        second.address,
        host="other.test",
        tls=True,
        tls_certificate_path=other_cert,
        tls_private_key_path=other_key,
    )
    trust = {
        name: Path(cert).read_text()
        for name, cert in (("example.com", certificate[0]), ("other.test", other_cert))
    }
    assert (
        h3_get(
            h3_proxy.https_port, "/", server_name="example.com", cadata=trust["example.com"]
        ).text
        == "first"
    )
    assert (
        h3_get(h3_proxy.https_port, "/", server_name="other.test", cadata=trust["other.test"]).text
        == "second"
    )
    with pytest.raises(ConnectionError):  # the client rejects example.com's certificate
        h3_get(
            h3_proxy.https_port,
            "/",
            server_name="other.test",
            cadata=trust["example.com"],
            timeout=5,
        )
    with pytest.raises(ConnectionError):
        h3_get(h3_proxy.https_port, "/", server_name="unknown.test", timeout=5)
    entry = h3_proxy.wait_for_log("TLS handshake error", host="unknown.test")
    assert (entry["error"], entry["proto"]) == ("unknown server name", "HTTP/3.0")


def test_bodies_both_ways_and_concurrent_streams(
    h3_proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(h3_proxy, app, certificate)
    posted = asyncio.run(
        h3_requests(h3_proxy.https_port, [("POST", "/echo")], body=b"y" * 300_000)
    )[0]
    echoed = json.loads(posted.text)
    assert (echoed["method"], echoed["body"]) == ("POST", "y" * 300_000)
    big = h3_get(h3_proxy.https_port, "/big?n=3000000")
    assert (big.status, len(big.body)) == (200, 3_000_000)
    many: list[H3Response] = asyncio.run(
        h3_requests(h3_proxy.https_port, [("GET", f"/sleep?s=0.3&i={i}") for i in range(10)])
    )
    assert [(r.status, r.text) for r in many] == [(200, "slept")] * 10
    ports = {e["client_port"] for e in h3_proxy.request_logs() if e["path"] == "/sleep"}
    assert len(ports) == 1  # one QUIC connection


def test_shutdown_lets_an_http3_request_finish(
    h3_proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(h3_proxy, app, certificate)
    result: list[H3Response] = []
    thread = threading.Thread(target=lambda: result.append(h3_get(h3_proxy.https_port, "/slow")))
    thread.start()
    wait_until(app.slow_started.is_set)
    assert h3_proxy.process is not None
    h3_proxy.process.terminate()  # SIGTERM
    app.release.set()
    thread.join(WAIT)
    assert result and (result[0].status, result[0].text) == (200, "first slow done")
    assert h3_proxy.process.wait(timeout=WAIT) == 0


def test_an_automatic_certificate_serves_http3_once_obtained(
    make_proxy: MakeProxy, make_pebble: Callable[[int, int], Pebble], app: UpstreamServer
) -> None:
    proxy = make_proxy(start=False, extra_args=["--http3"])
    pebble = make_pebble(proxy.http_port, proxy.https_port)
    proxy.extra_env.update(
        SHIPYARD_PROXY_ACME_DIRECTORY=pebble.directory_url,
        REQUESTS_CA_BUNDLE=str(pebble.ca_bundle),
    )
    proxy.start()
    proxy.deploy("web", app.address, host="app.test", tls=True)
    roots = pebble.issuer_roots_pem()
    ctx = ssl.create_default_context(cadata=roots)
    tcp = request(proxy.https_port, "/", host="app.test", tls=ctx, server_hostname="app.test")
    assert tcp.status == 200
    quic = h3_get(proxy.https_port, "/", server_name="app.test", cadata=roots)
    assert (quic.status, quic.text) == (200, "first")
