"""`shipyard server ...`: the servers themselves."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, planned
from shipyard.core.context import Context

server = group("server", help="Bootstrap servers with curl and Docker")


@planned("exec", parent=server)
@click.option("-i", "--interactive", is_flag=True, help="Run the command interactively (on the primary host).")
@click.argument("cmd", nargs=-1, required=True)
def exec_(ctx: Context, **_: object) -> None:
    """Run a custom command on the server (use --help to show options)."""


@planned("bootstrap", parent=server)
def bootstrap(ctx: Context) -> None:
    """Set up Docker to run shipyard apps."""
