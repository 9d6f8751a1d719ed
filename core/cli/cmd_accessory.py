"""`shipyard accessory ...`: long-lived services next to the app."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, planned
from shipyard.core.context import Context

accessory = group("accessory", help="Manage accessories (db/redis/search)")

name_argument = click.argument("name", metavar="NAME|all")


@planned("boot", parent=accessory)
@name_argument
def boot(ctx: Context, **_: object) -> None:
    """Boot new accessory service on host (use NAME=all to boot all accessories)."""


@planned("reboot", parent=accessory)
@name_argument
def reboot(ctx: Context, **_: object) -> None:
    """Reboot existing accessory on host (stop container, remove container, start new container)."""


@planned("start", parent=accessory)
@name_argument
def start(ctx: Context, **_: object) -> None:
    """Start existing accessory container on host."""


@planned("stop", parent=accessory)
@name_argument
def stop(ctx: Context, **_: object) -> None:
    """Stop existing accessory container on host."""


@planned("restart", parent=accessory)
@name_argument
def restart(ctx: Context, **_: object) -> None:
    """Restart existing accessory container on host."""


@planned("details", parent=accessory)
@name_argument
def details(ctx: Context, **_: object) -> None:
    """Show details about accessory on host (use NAME=all to show all accessories)."""


@planned("exec", parent=accessory)
@name_argument
@click.option("-i", "--interactive", is_flag=True, help="Execute command over ssh for an interactive shell.")
@click.option("--reuse", is_flag=True, help="Reuse currently running container instead of starting a new one.")
@click.argument("cmd", nargs=-1, required=True)
def exec_(ctx: Context, **_: object) -> None:
    """Execute a custom command on servers."""


@planned("logs", parent=accessory)
@name_argument
@click.option("-s", "--since", help="Show logs since timestamp or relative time.")
@click.option("-n", "--lines", type=int, help="Number of log lines to pull from each server.")
@click.option("-g", "--grep", help="Show lines with grep match only.")
@click.option("-f", "--follow", is_flag=True, help="Follow logs on primary server.")
def logs(ctx: Context, **_: object) -> None:
    """Show log lines from accessory on host."""


@planned("remove", parent=accessory)
@name_argument
@click.option("-y", "--confirmed", is_flag=True, help="Proceed without confirmation question.")
def remove(ctx: Context, **_: object) -> None:
    """Remove accessory container, image and data directory from host (use NAME=all to remove all)."""


@planned("upgrade", parent=accessory)
@name_argument
@click.option("--rolling", is_flag=True, help="Upgrade one host at a time.")
def upgrade(ctx: Context, **_: object) -> None:
    """Upgrade accessories from Kamal 1.x to 2.0."""
