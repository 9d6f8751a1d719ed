"""Fixtures for the shipyard-proxy black-box tests: a proxy process and upstream servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pebble_harness import PEBBLE_BINARY, Pebble
from proxy_harness import Proxy, UpstreamServer, write_self_signed


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
    names = ["localhost", "example.com", "*.example.com", "127.0.0.1"]
    return write_self_signed(tmp_path_factory.mktemp("certs"), names)


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
