"""Local registry mode: hosts pull from a registry on the deployer through SSH.

With ``registry.server: localhost:PORT`` (or a proxy image from ``localhost:PORT``), each
host gets a remote port forward (``ssh -R PORT:localhost:PORT``) over the run's existing
connection, opened once per host and closed when the run ends. Docker on the host trusts
loopback registries, so ``docker pull localhost:PORT/app:v1`` just works.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import PortForward, Transport

_LOCAL = re.compile(r"^(?:localhost|127\.0\.0\.1):(\d+)$")
_STATE = "registry_tunnel"
_lock = threading.Lock()


def local_ports(ctx: Context) -> list[int]:
    """Ports of every local registry this config pulls from (the app's, the proxy's)."""
    servers = [ctx.config.schema.registry.server]
    run = ctx.config.schema.proxy.run
    if run is not None:
        servers.append(run.registry)
    ports = [int(m.group(1)) for server in servers if server and (m := _LOCAL.match(server))]
    return sorted(set(ports))


def ensure(ctx: Context, transport: Transport) -> None:
    """Open the forwards this host needs, once per run."""
    ports = local_ports(ctx)
    if not ports:
        return
    with _lock:
        opened: dict[tuple[str, int], PortForward] = ctx.state.setdefault(_STATE, {})
        wanted = [port for port in ports if (transport.host, port) not in opened]
    for port in wanted:
        forward = transport.forward_remote_port(port, "127.0.0.1", port)
        with _lock:
            opened[(transport.host, port)] = forward
