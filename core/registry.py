"""``registry login`` / ``logout`` on the deployer and the hosts. The password goes to
``docker login --password-stdin``, never on a command line."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from shipyard.core import remote_docker
from shipyard.core.errors import ShipyardError
from shipyard.core.parallel import on_hosts, report

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import CommandResult, Transport


def _credential(ctx: Context, key: str) -> str:
    value = getattr(ctx.config.schema.registry, key)
    if value is None:
        raise ShipyardError(f"registry.{key} is not set in config/deploy.yml (needed to log in)")
    return ctx.secrets[value[0]] if isinstance(value, list) else str(value)


def _server(ctx: Context) -> str:
    registry = ctx.config.schema.registry
    if registry.is_local:
        raise ShipyardError(
            f"registry.server is a local registry ({registry.server}): nothing to log in to; hosts pull through an SSH tunnel"
        )
    return registry.server or "docker.io"


def _local(argv: list[str], stdin: str | None = None) -> None:
    completed = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ShipyardError(f"local `{' '.join(argv[:2])}` failed: {tail}")


def login(ctx: Context, *, skip_local: bool, skip_remote: bool) -> None:
    server = _server(ctx)
    username, password = _credential(ctx, "username"), _credential(ctx, "password")
    argv = remote_docker.login(server, username)
    if not skip_local:
        _local(argv, password)
        ctx.output.info(f"Logged in to {server} on this machine")
    if not skip_remote:

        def remote(transport: Transport) -> CommandResult:
            return transport.check(argv, stdin=password.encode())

        report(ctx, on_hosts(ctx, ctx.hosts, remote), lambda _: f"Logged in to {server}")


def logout(ctx: Context, *, skip_local: bool, skip_remote: bool) -> None:
    server = _server(ctx)
    argv = remote_docker.logout(server)
    if not skip_local:
        _local(argv)
        ctx.output.info(f"Logged out of {server} on this machine")
    if not skip_remote:
        report(ctx, on_hosts(ctx, ctx.hosts, lambda t: t.check(argv)), lambda _: f"Logged out of {server}")
