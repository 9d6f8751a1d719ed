"""`shipyard registry ...`: registry sessions on the deployer and the servers."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, options, planned
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


@planned("login", parent=registry)
@sides
def login(ctx: Context, **_: object) -> None:
    """Log in to remote registry locally and remotely."""


@planned("logout", parent=registry)
@sides
def logout(ctx: Context, **_: object) -> None:
    """Log out of remote registry locally and remotely."""
