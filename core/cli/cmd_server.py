"""`shipyard server ...`: the servers themselves."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, group
from shipyard.core.context import Context

server = group("server", help="Bootstrap servers with curl and Docker")


# Options go before the command; everything from the command's first word on is the
# command, as with `ssh host CMD`.
@command("exec", parent=server, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Run the command interactively (on the primary host).")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(ctx: Context, interactive: bool, cmd: tuple[str, ...]) -> None:
    """Run a custom command on the server (use --help to show options)."""
    from shipyard.core import server as operations

    operations.require_hosts(ctx)
    operations.execute(ctx, cmd, interactive=interactive)


@command("bootstrap", parent=server)
def bootstrap(ctx: Context) -> None:
    """Set up Docker to run shipyard apps."""
    from shipyard.core import server as operations
    from shipyard.core.lock import deploy_lock

    operations.require_hosts(ctx)
    with deploy_lock(ctx):
        operations.bootstrap(ctx)
