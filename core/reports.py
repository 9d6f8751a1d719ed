"""Read-only views of the servers: ``details`` and ``audit``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core import remote_docker
from shipyard.core.parallel import on_hosts, report
from shipyard.core.remote_docker import PROXY_CONTAINER

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

AUDIT_LINES = 50
_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Names}}"


def details(ctx: Context) -> None:
    """The proxy and the app's containers on every host."""
    config = ctx.config
    app_filter = remote_docker.labels(config.service, destination=config.destination)

    def show(transport: Transport) -> str:
        proxy = transport.check(remote_docker.ps(name=PROXY_CONTAINER, all_states=True, fmt=_TABLE)).stdout
        app = transport.check(remote_docker.ps(filters=app_filter, all_states=True, fmt=_TABLE)).stdout
        return f"Proxy:\n{_rows_or_none(proxy)}\nApp:\n{_rows_or_none(app)}"

    report(ctx, on_hosts(ctx, ctx.hosts, show), lambda text: text)


def _rows_or_none(table: str) -> str:
    lines = table.rstrip("\n").splitlines()
    return "\n".join(lines) if len(lines) > 1 else "  (none)"


def audit(ctx: Context) -> None:
    """The last lines of the audit log on every host."""
    path = ctx.config.audit_log
    script = 'if [ -f "$1" ]; then tail -n "$2" "$1"; else echo "(no audit log yet)"; fi'

    def tail(transport: Transport) -> str:
        return transport.check(["sh", "-c", script, "sh", path, str(AUDIT_LINES)]).stdout.rstrip("\n")

    report(ctx, on_hosts(ctx, ctx.config.all_hosts if not ctx.options.hosts and not ctx.options.roles else ctx.hosts, tail),
           lambda text: text)
