"""Fixtures for the shipyard-proxy black-box tests: a proxy process and upstream servers."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pebble_harness import PEBBLE_BINARY, Pebble
from proxy_harness import Proxy, UpstreamServer


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    """A running proxy with its own HOME, socket and ports; stopped after the test."""
    instance = Proxy(tmp_path).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Build a proxy with custom settings (env, metrics port, …); started unless start=False."""
    created: list[Proxy] = []

    def factory(start: bool = True, **kwargs: object) -> Proxy:
        instance = Proxy(tmp_path / f"p{len(created)}", **kwargs)  # type: ignore[arg-type]
        instance.workdir.mkdir(parents=True, exist_ok=True)
        created.append(instance)
        return instance.start() if start else instance

    yield factory
    for instance in created:
        instance.stop()


@pytest.fixture
def upstream() -> Iterator[Callable[[str], UpstreamServer]]:
    """Start named upstream servers on free loopback ports; all stopped after the test."""
    servers: list[UpstreamServer] = []

    def factory(name: str = "first") -> UpstreamServer:
        server = UpstreamServer(name)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def app(upstream: Callable[[str], UpstreamServer]) -> UpstreamServer:
    return upstream("first")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost, example.com and *.example.com."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Co")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("example.com"),
                    x509.DNSName("*.example.com"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("certs")
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def make_pebble(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Start Pebble, a local ACME CA, whose VA validates HTTP-01 on ``http_port`` and
    TLS-ALPN-01 on ``tls_port`` of 127.0.0.1 (every name resolves there); all stopped after
    the test.  Extra keyword arguments go to :class:`Pebble` (env, validity_seconds)."""
    if not PEBBLE_BINARY.exists():
        pytest.fail(
            f"{PEBBLE_BINARY} is missing; the ACME tests need Pebble: "
            "run `sudo bash tests/lab/install-packages.sh` (Debian package `pebble`)",
            pytrace=False,
        )
    created: list[Pebble] = []

    def factory(http_port: int, tls_port: int, **kwargs: object) -> Pebble:
        workdir = tmp_path / f"pebble{len(created)}"
        instance = Pebble(http_port, tls_port, workdir, start=False, **kwargs)  # type: ignore[arg-type]
        created.append(instance)
        return instance.start()

    yield factory
    for instance in created:
        instance.stop()
