"""`shipyard registry ...`: registry sessions on the deployer and the servers."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, group, options, planned
from shipyard.core.context import Context

registry = group("registry", help="Login and -out of the image registry")

sides = options(
    click.option("-L", "--skip-local", is_flag=True, help="Skip local login."),
    click.option("-R", "--skip-remote", is_flag=True, help="Skip remote login."),
)


@planned("setup", parent=registry)
@sides
def setup(ctx: Context, **_: object) -> None:
    """Setup local registry or log in to remote registry locally and remotely."""


@planned("remove", parent=registry)
@sides
def remove(ctx: Context, **_: object) -> None:
    """Remove local registry or log out of remote registry locally and remotely."""


@command("login", parent=registry)
@sides
def login(ctx: Context, skip_local: bool, skip_remote: bool) -> None:
    """Log in to remote registry locally and remotely."""
    from shipyard.core import registry as sessions

    sessions.login(ctx, skip_local=skip_local, skip_remote=skip_remote)


@command("logout", parent=registry)
@sides
def logout(ctx: Context, skip_local: bool, skip_remote: bool) -> None:
    """Log out of remote registry locally and remotely."""
    from shipyard.core import registry as sessions

    sessions.logout(ctx, skip_local=skip_local, skip_remote=skip_remote)
