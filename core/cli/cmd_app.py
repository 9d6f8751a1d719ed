"""`shipyard app ...`: manage the application's containers."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, options, planned
from shipyard.core.context import Context

app = group("app", help="Manage application")

log_options = options(
    click.option("-s", "--since", help="Show lines since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)."),
    click.option("-n", "--lines", type=int, help="Number of lines to show from each server [100, or 10 with -f]."),
    click.option("-g", "--grep", help="Show lines with grep match only (use this to fetch specific requests by id)."),
    click.option("--grep-options", help="Additional options supplied to grep."),
    click.option("-f", "--follow", is_flag=True, help="Follow log on primary server (or specific host set by --hosts)."),
    click.option("-T", "--skip-timestamps", is_flag=True, help="Skip appending timestamps to logging output."),
)


@planned("boot", parent=app)
def boot(ctx: Context) -> None:
    """Boot app on servers (or reboot app if already running)."""


@planned("start", parent=app)
def start(ctx: Context) -> None:
    """Start existing app container on servers."""


@planned("stop", parent=app)
def stop(ctx: Context) -> None:
    """Stop app container on servers."""


@planned("details", parent=app)
def details(ctx: Context) -> None:
    """Show details about app containers."""


@planned("exec", parent=app)
@click.option("-i", "--interactive", is_flag=True, help="Execute command over ssh for an interactive shell (use for console/bash).")
@click.option("--reuse", is_flag=True, help="Reuse currently running container instead of starting a new one.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY:VALUE", help="Set environment variables for the command.")
@click.option("--detach", is_flag=True, help="Execute command in a detached container.")
@click.argument("cmd", nargs=-1, required=True)
def exec_(ctx: Context, **_: object) -> None:
    """Execute a custom command on servers within the app container (use --help to show options)."""


@planned("containers", parent=app)
def containers(ctx: Context) -> None:
    """Show app containers on servers."""


@planned("images", parent=app)
def images(ctx: Context) -> None:
    """Show app images on servers."""


@planned("logs", parent=app)
@log_options
@click.option("--container-id", help="Docker container ID to fetch logs.")
def logs(ctx: Context, **_: object) -> None:
    """Show log lines from app on servers (use --help to show options)."""


@planned("stale_containers", parent=app)
@click.option("-s", "--stop", is_flag=True, help="Stop the stale containers found.")
def stale_containers(ctx: Context, **_: object) -> None:
    """Detect app stale containers."""


@planned("version", parent=app)
def version(ctx: Context) -> None:
    """Show app version currently running on servers."""


@planned("maintenance", parent=app)
@click.option("--drain-timeout", type=int, help="How long to allow in-flight requests to complete (defaults to drain_timeout from config).")
@click.option("--message", help="Message to display to clients while stopped.")
def maintenance(ctx: Context, **_: object) -> None:
    """Set the app to maintenance mode."""


@planned("live", parent=app)
def live(ctx: Context) -> None:
    """Set the app to live mode."""


@planned("remove", parent=app)
def remove(ctx: Context) -> None:
    """Remove app containers and images from servers."""
