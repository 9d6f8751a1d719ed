"""HTTPS: custom certificates chosen by SNI, redirects, and the limits of this environment."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from proxy_harness import WAIT, Proxy, UpstreamServer, request

pytestmark = pytest.mark.proxy

Upstreams = Callable[[str], UpstreamServer]


def client_context(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    return context


def tls_deploy(
    proxy: Proxy,
    app: UpstreamServer,
    certificate: tuple[str, str],
    service: str = "web",
    **flags: Any,
) -> None:
    """Deploy ``service`` to ``app`` with TLS on and the test certificate."""
    cert, key = certificate
    proxy.deploy(
        service,
        app.address,
        host=flags.pop("host", "example.com"),
        tls=True,
        tls_certificate_path=cert,
        tls_private_key_path=key,
        **flags,
    )


def test_https_with_custom_certificate(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)
    response = request(
        proxy.https_port,
        "/echo",
        host="example.com",
        tls=client_context(certificate[0]),
        server_hostname="example.com",
    )
    assert response.status == 200
    seen = app.last().headers
    assert seen["X-Forwarded-Proto"] == "https"
    # With TLS on, forward-headers defaults to off: client values are not trusted.
    response = request(
        proxy.https_port,
        "/echo",
        host="example.com",
        tls=client_context(certificate[0]),
        server_hostname="example.com",
        headers={"X-Forwarded-For": "6.6.6.6"},
    )
    assert app.last().headers["X-Forwarded-For"] == "127.0.0.1"


def test_certificate_is_picked_by_sni(
    proxy: Proxy, upstream: Upstreams, certificate: tuple[str, str]
) -> None:
    cert = certificate[0]
    first = upstream("first")
    second = upstream("second")
    tls_deploy(proxy, first, certificate, "one")
    tls_deploy(proxy, second, certificate, "two", host="*.example.com")
    ctx = client_context(cert)
    assert (
        request(
            proxy.https_port, "/", host="example.com", tls=ctx, server_hostname="example.com"
        ).text
        == "first"
    )
    assert (
        request(
            proxy.https_port,
            "/",
            host="app.example.com",
            tls=ctx,
            server_hostname="app.example.com",
        ).text
        == "second"
    )


def test_unknown_sni_fails_the_handshake(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=WAIT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="unknown.test")
    proxy.wait_for_log("TLS handshake error", host="unknown.test")


def test_http_redirects_to_https_without_the_port(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate)
    response = proxy.get("/path?x=1", host=f"example.com:{proxy.http_port}")
    assert response.status == 301
    assert response.header("Location") == "https://example.com/path?x=1"
    assert response.header("Connection") == "close"
    assert "Moved Permanently</a>" in response.text
    post = proxy.get("/", method="POST", body=b"data")
    assert post.status == 301 and post.body == b""


def test_tls_redirect_can_be_disabled(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    tls_deploy(proxy, app, certificate, tls_redirect=False)
    assert proxy.get("/").status == 200
    assert app.last().headers["X-Forwarded-Proto"] == "http"


def test_prefix_services_inherit_tls_from_the_root(
    proxy: Proxy, upstream: Upstreams, certificate: tuple[str, str]
) -> None:
    cert = certificate[0]
    root = upstream("root")
    api = upstream("api")
    tls_deploy(proxy, root, certificate, "root")
    proxy.deploy("api", api.address, host="example.com", path_prefix="/api")
    assert proxy.get("/api/x").status == 301
    ctx = client_context(cert)
    assert request(proxy.https_port, "/api/x", tls=ctx, server_hostname="example.com").text == "api"
    # Without a root service the prefix service reverts to TLS off: no redirect any more.
    proxy.cli("remove", "root", check=True)
    assert proxy.get("/api/x").text == "api"


def test_tls_request_to_a_plain_service_is_503(
    proxy: Proxy, upstream: Upstreams, certificate: tuple[str, str]
) -> None:
    cert = certificate[0]
    secure = upstream("secure")
    plain = upstream("plain")
    tls_deploy(proxy, secure, certificate, "secure")
    proxy.deploy("plain", plain.address)  # catch-all, TLS off
    # SNI example.com has a certificate; the Host header routes to the plain service.
    response = request(
        proxy.https_port,
        "/",
        host="other.test",
        tls=client_context(cert),
        server_hostname="example.com",
    )
    assert response.status == 503
    assert proxy.get("/", host="other.test").text == "plain"


def test_canonical_host_redirect(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    proxy.deploy(
        "web", app.address, host="example.com,www.example.com", canonical_host="example.com"
    )
    response = proxy.get("/a?b=c", host="www.example.com")
    assert (response.status, response.header("Location")) == (301, "http://example.com/a?b=c")
    assert proxy.get("/", host="example.com").status == 200
    cert = certificate[0]
    tls_deploy(
        proxy, app, certificate, host="example.com,www.example.com", canonical_host="example.com"
    )
    response = proxy.get("/", host="www.example.com")
    assert response.header("Location") == "https://example.com/"  # one redirect for both reasons
    secure = request(
        proxy.https_port,
        "/",
        host="www.example.com",
        tls=client_context(cert),
        server_hostname="www.example.com",
    )
    assert (secure.status, secure.header("Location")) == (301, "https://example.com/")


def test_bad_certificate_is_rejected(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    result = proxy.deploy(
        "web",
        app.address,
        host="example.com",
        tls=True,
        tls_certificate_path=key,
        tls_private_key_path=cert,
        check=False,
    )
    assert (result.returncode, result.stderr) == (1, "Error: unable to load certificate\n")


def test_automatic_tls_cannot_use_wildcards(proxy: Proxy, app: UpstreamServer) -> None:
    result = proxy.deploy(
        "web", app.address, host="first.example.com,*.first.example.com", tls=True, check=False
    )
    assert result.stderr == "Error: automatic TLS does not support wildcards\n"


def test_automatic_tls_without_a_reachable_ca_fails_the_handshake_cleanly(
    proxy: Proxy, app: UpstreamServer
) -> None:
    """The harness points ACME at a closed local port: the deploy works (so redirects do),
    the handshake fails, and the log says why; plain HTTP keeps answering."""
    proxy.deploy("web", app.address, host="example.com", tls=True)
    assert proxy.get("/").status == 301
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=WAIT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="example.com")
    entry = proxy.wait_for_log("TLS handshake error", host="example.com", service="web")
    assert entry["level"] == "ERROR"
    assert entry["error"].startswith("no certificate: example.com: ConnectionError"), entry
    assert "\x1b[myes\x1b[0m" in proxy.cli("list", check=True).stdout
    assert proxy.get("/up").status == 301  # still answering on plain HTTP


def test_acme_challenge_path_is_the_apps_when_the_certificate_is_custom(
    proxy: Proxy, app: UpstreamServer, certificate: tuple[str, str]
) -> None:
    """Only automatic-TLS services answer HTTP-01; here the path takes the usual redirect."""
    tls_deploy(proxy, app, certificate)
    assert proxy.get("/.well-known/acme-challenge/x", host="example.com").status == 301
