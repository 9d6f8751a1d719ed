"""Health-check probes: ``GET http://<target>[:<port>]<path>`` where any 2xx is healthy."""

from __future__ import annotations

import asyncio
import contextlib

from .options import HealthCheckConfig
from .upstream import split_address

MAX_STATUS_LINE = 8192


def health_check_url(target: str, config: HealthCheckConfig) -> tuple[str, int, str]:
    """(host, port, path) of the probe; a port of 0 keeps the target's port."""
    host, port = split_address(target)
    if config.port:
        port = config.port
    path = config.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    return host, port, path


def describe_url(target: str, config: HealthCheckConfig) -> str:
    host, port, path = health_check_url(target, config)
    explicit_port = config.port or (":" in target)
    return f"http://{host}:{port}{path}" if explicit_port else f"http://{host}{path}"


async def probe(target: str, config: HealthCheckConfig, timeout: float) -> str | None:
    """Run one check; None when healthy, else the reason in kamal-proxy's words."""
    try:
        return await asyncio.wait_for(_probe(target, config), timeout)
    except TimeoutError:
        return "request timed out"


async def _probe(target: str, config: HealthCheckConfig) -> str | None:
    host, port, path = health_check_url(target, config)
    host_header = config.host or (target if config.port == 0 else f"{host}:{port}")
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return f"dial tcp {host}:{port}: connect: {reason}"
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: kamal-proxy\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = await reader.readline()
        if not line:
            return "EOF"
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return "malformed HTTP response"
        status = int(parts[1])
        if 200 <= status < 300:
            return None
        return f"unexpected status ({status})"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
