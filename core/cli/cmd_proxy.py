"""`shipyard proxy ...`: manage the proxy container on the servers."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, options, planned
from shipyard.core.context import Context

proxy = group("proxy", help="Manage shipyard-proxy")

confirmed = click.option("-y", "--confirmed", is_flag=True, help="Proceed without confirmation question.")


@planned("boot", parent=proxy)
def boot(ctx: Context) -> None:
    """Boot proxy on servers."""


@planned("reboot", parent=proxy)
@options(confirmed, click.option("--rolling", is_flag=True, help="Reboot proxy on hosts in sequence, rather than in parallel."))
def reboot(ctx: Context, **_: object) -> None:
    """Reboot proxy on servers (stop container, remove container, start new container)."""


@planned("start", parent=proxy)
def start(ctx: Context) -> None:
    """Start existing proxy container on servers."""


@planned("stop", parent=proxy)
def stop(ctx: Context) -> None:
    """Stop existing proxy container on servers."""


@planned("restart", parent=proxy)
def restart(ctx: Context) -> None:
    """Restart existing proxy container on servers."""


@planned("details", parent=proxy)
def details(ctx: Context) -> None:
    """Show details about proxy container from servers."""


@planned("logs", parent=proxy)
@options(
    click.option("-s", "--since", help="Show logs since timestamp or relative time."),
    click.option("-n", "--lines", type=int, help="Number of log lines to pull from each server."),
    click.option("-g", "--grep", help="Show lines with grep match only."),
    click.option("-f", "--follow", is_flag=True, help="Follow logs on primary server (or specific host set by --hosts)."),
    click.option("-T", "--skip-timestamps", is_flag=True, help="Skip appending timestamps to logging output."),
)
def logs(ctx: Context, **_: object) -> None:
    """Show log lines from proxy on servers."""


@planned("remove", parent=proxy)
@click.option("--force", is_flag=True, help="Force removing proxy when apps are still installed.")
def remove(ctx: Context, **_: object) -> None:
    """Remove proxy container and image from servers."""
