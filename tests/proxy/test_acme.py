"""Automatic TLS against a real ACME server (Pebble, local): issuance on the first
handshake over HTTP-01, the autocert cache layout, restarts from the cache, renewal, and
on-demand TLS."""

from __future__ import annotations

import concurrent.futures
import hashlib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from pebble_harness import Pebble
from proxy_harness import Proxy, UpstreamServer, free_port, request, write_self_signed

from shipyard.proxy.acme import on_demand_url
from shipyard.proxy.tls import ClientHello, IncompleteHello, parse_client_hello

MakeProxy = Callable[..., Proxy]
MakePebble = Callable[[int, int], Pebble]


# --- pieces that need no servers ------------------------------------------------------------


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a real TLS client (the ssl module), as it would arrive."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_server_name_and_alpn_are_read_from_a_real_client_hello() -> None:
    hello = parse_client_hello(client_hello("App.Example.com.", ["h2", "http/1.1"]))
    assert hello == ClientHello("app.example.com", ["h2", "http/1.1"])
    assert parse_client_hello(client_hello(None)) == ClientHello("", [])
    assert parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    whole = client_hello("app.example.com")
    with pytest.raises(IncompleteHello):
        parse_client_hello(whole[: len(whole) // 2])


def test_on_demand_url_adds_the_host_and_sorts_the_query() -> None:
    assert on_demand_url("/allow?token=abc", "a.com") == "/allow?host=a.com&token=abc"
    assert on_demand_url("/allow", "a.com:8080") == "/allow?host=a.com%3A8080"
    assert (
        on_demand_url("https://auth.example/ok?z=1&a=2", "b.com")
        == "https://auth.example/ok?a=2&host=b.com&z=1"
    )


# --- against Pebble -------------------------------------------------------------------------


@pytest.fixture
def acme_proxy(make_proxy: MakeProxy, make_pebble: MakePebble) -> tuple[Proxy, Pebble]:
    """A proxy whose ACME CA is a fresh Pebble, validating on the proxy's own ports."""
    proxy = make_proxy(start=False)
    pebble = make_pebble(proxy.http_port, proxy.https_port)
    proxy.extra_env.update(
        SHIPYARD_PROXY_ACME_DIRECTORY=pebble.directory_url,
        REQUESTS_CA_BUNDLE=str(pebble.ca_bundle),  # the ACME client trusts Pebble's API
    )
    return proxy.start(), pebble


def verifying_context(pebble: Pebble) -> ssl.SSLContext:
    """A client that trusts only Pebble's issuing root, and checks the host name."""
    return ssl.create_default_context(cadata=pebble.issuer_roots_pem())


def https_get(proxy: Proxy, name: str, ctx: ssl.SSLContext, path: str = "/") -> str:
    response = request(proxy.https_port, path, host=name, tls=ctx, server_hostname=name)
    assert response.status == 200, response
    return response.text


def assert_handshake_fails(proxy: Proxy, pebble: Pebble, name: str) -> None:
    with pytest.raises(ssl.SSLError):
        request(
            proxy.https_port, "/", host=name, tls=verifying_context(pebble), server_hostname=name
        )


def cache_dir(proxy: Proxy, pebble: Pebble) -> Path:
    digest = hashlib.sha256(pebble.directory_url.encode()).hexdigest()
    return proxy.home / ".config" / "kamal-proxy" / "certs" / digest


def test_first_handshake_gets_a_certificate_and_caches_it(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    proxy.deploy("web", app.address, host="app.test,www.app.test", tls=True)
    ctx = verifying_context(pebble)
    assert https_get(proxy, "app.test", ctx) == "first"
    assert https_get(proxy, "www.app.test", ctx) == "first"

    folder = cache_dir(proxy, pebble)
    assert sorted(p.name for p in folder.iterdir()) == [
        "acme_account+key",
        "app.test",
        "www.app.test",
    ]
    assert folder.stat().st_mode & 0o777 == 0o700
    for file in folder.iterdir():
        assert file.stat().st_mode & 0o777 == 0o600
    cached = (folder / "app.test").read_bytes()
    assert cached.startswith(b"-----BEGIN EC PRIVATE KEY-----")  # autocert's layout
    leaf = x509.load_pem_x509_certificate(cached[cached.index(b"-----BEGIN CERTIFICATE") :])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["app.test"]
    entry = proxy.wait_for_log("Certificate obtained", host="app.test")
    assert (entry["level"], entry["challenge"]) == ("INFO", "http-01")
    # The HTTP-01 token is gone once validated; HTTP still redirects everything else.
    assert proxy.get("/.well-known/acme-challenge/unknown", host="app.test").status == 404
    assert proxy.get("/", host="app.test").status == 301


def test_concurrent_first_handshakes_share_one_order(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    proxy.deploy("web", app.address, host="app.test", tls=True)
    ctx = verifying_context(pebble)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        bodies = list(pool.map(lambda _: https_get(proxy, "app.test", ctx), range(6)))
    assert bodies == ["first"] * 6
    requested = [e for e in proxy.logs() if e.get("msg") == "Requesting certificate"]
    assert [e["host"] for e in requested] == ["app.test"]


def test_a_restart_serves_the_cached_certificate_without_the_ca(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    proxy.deploy("web", app.address, host="app.test", tls=True)
    ctx = verifying_context(pebble)
    assert https_get(proxy, "app.test", ctx) == "first"
    pebble.stop()  # from now on the CA is gone
    proxy.stop()
    proxy.start()
    assert https_get(proxy, "app.test", ctx) == "first"
    assert not [e for e in proxy.logs() if e.get("msg") == "Requesting certificate"]


def test_a_cached_certificate_near_expiry_is_renewed(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    write_self_signed(cache_dir(proxy, pebble), ["app.test"], days_left=10, combined=True)
    proxy.deploy("web", app.address, host="app.test", tls=True)
    # Pebble's chain verifies, the planted self-signed one would not.
    assert https_get(proxy, "app.test", verifying_context(pebble)) == "first"
    proxy.wait_for_log("Certificate obtained", host="app.test")


def test_a_cached_certificate_far_from_expiry_is_used_as_is(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    write_self_signed(cache_dir(proxy, pebble), ["app.test"], days_left=80, combined=True)
    proxy.deploy("web", app.address, host="app.test", tls=True)
    ctx = ssl.create_default_context(cafile=str(cache_dir(proxy, pebble) / "app.test"))
    assert https_get(proxy, "app.test", ctx) == "first"
    assert not [e for e in proxy.logs() if e.get("msg") == "Requesting certificate"]


def test_on_demand_tls_asks_the_service_before_issuing(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    app.allowed_hosts = {"good.test"}
    proxy.deploy("web", app.address, tls=True, tls_on_demand_url="/allow?token=abc")
    assert https_get(proxy, "good.test", verifying_context(pebble)) == "first"
    check = next(seen for seen in app.requests if seen.path.startswith("/allow"))
    assert check.path == "/allow?host=good.test&token=abc"
    assert check.headers["Host"] == "good.test"
    assert check.headers["X-Forwarded-Proto"] == "http"

    assert_handshake_fails(proxy, pebble, "bad.test")
    denied = proxy.wait_for_log("TLS on-demand check denied host", host="bad.test")
    assert (denied["level"], denied["status"], denied["body"]) == ("WARN", 403, "denied bad.test")
    assert not (cache_dir(proxy, pebble) / "bad.test").exists()


def test_on_demand_tls_with_an_absolute_url_takes_only_a_200(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    app.allowed_hosts = {"good.test"}
    proxy.deploy("web", app.address, tls=True, tls_on_demand_url=f"http://{app.address}/allow")
    assert https_get(proxy, "good.test", verifying_context(pebble)) == "first"
    # A redirect is a denial, not followed.
    proxy.deploy(
        "web", app.address, tls=True, tls_on_demand_url=f"http://{app.address}/status?code=302"
    )
    assert_handshake_fails(proxy, pebble, "other.test")
    denied = proxy.wait_for_log("TLS on-demand check denied host", host="other.test")
    assert denied["status"] == 302
    checks = [seen.path for seen in app.requests if not seen.path.startswith("/up")]
    assert checks == ["/allow?host=good.test", "/", "/status?code=302&host=other.test"]


def test_on_demand_denials_stopped_services_and_long_bodies(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    proxy.deploy(
        "web", app.address, tls=True, tls_on_demand_url=f"/status?code=403&body={'n' * 500}"
    )
    assert_handshake_fails(proxy, pebble, "long.test")
    denied = proxy.wait_for_log("TLS on-demand check denied host", host="long.test")
    assert (denied["status"], denied["body"]) == (403, "n" * 256)  # cut to 256 bytes
    proxy.deploy("web", app.address, tls=True, tls_on_demand_url="/allow")
    app.allowed_hosts = {"stopped.test"}
    proxy.cli("stop", "web", check=True)
    assert_handshake_fails(proxy, pebble, "stopped.test")
    denied = proxy.wait_for_log("TLS on-demand check denied host", host="stopped.test")
    assert denied["status"] == 503


def test_on_demand_skips_the_check_for_cached_names_and_survives_a_restart(
    acme_proxy: tuple[Proxy, Pebble], app: UpstreamServer
) -> None:
    proxy, pebble = acme_proxy
    folder = cache_dir(proxy, pebble)
    write_self_signed(folder, ["cached.test"], days_left=80, combined=True)
    rsa_path, _ = write_self_signed(folder / "tmp", ["rsa-only.test"], days_left=80, combined=True)
    Path(rsa_path).rename(folder / "rsa-only.test+rsa")
    proxy.deploy("web", app.address, tls=True, tls_on_demand_url="/allow")
    for name, cache_file in (
        ("cached.test", "cached.test"),
        ("rsa-only.test", "rsa-only.test+rsa"),
    ):
        ctx = ssl.create_default_context(cafile=str(folder / cache_file))
        assert https_get(proxy, name, ctx) == "first"
    assert not [seen for seen in app.requests if seen.path.startswith("/allow")]

    proxy.stop()
    proxy.start()  # the on-demand service comes back from the state file, and still asks
    app.allowed_hosts = {"new.test"}
    assert https_get(proxy, "new.test", verifying_context(pebble)) == "first"
    assert [seen.path for seen in app.requests if seen.path.startswith("/allow")] == [
        "/allow?host=new.test"
    ]


def test_tls_alpn_01_when_the_ca_cannot_reach_the_http_port(
    make_proxy: MakeProxy, make_pebble: MakePebble, app: UpstreamServer
) -> None:
    """Port 80 unreachable for the CA: HTTP-01 fails, and a second order validates over
    TLS-ALPN-01 on the HTTPS port (RFC 8737), as autocert also offers."""
    proxy = make_proxy(start=False)
    pebble = make_pebble(free_port(), proxy.https_port)  # nothing listens on that HTTP port
    proxy.extra_env.update(
        SHIPYARD_PROXY_ACME_DIRECTORY=pebble.directory_url,
        REQUESTS_CA_BUNDLE=str(pebble.ca_bundle),
    )
    proxy.start()
    proxy.deploy("web", app.address, host="app.test", tls=True)
    assert https_get(proxy, "app.test", verifying_context(pebble)) == "first"
    entry = proxy.wait_for_log("Certificate obtained", host="app.test")
    assert entry["challenge"] == "tls-alpn-01"
