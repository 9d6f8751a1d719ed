"""`shipyard proxy ...`: manage the proxy container on the servers."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, group, options
from shipyard.core.context import Context

proxy = group("proxy", help="Manage shipyard-proxy")

confirmed = click.option("-y", "--confirmed", is_flag=True, help="Proceed without confirmation question.")


@command("boot", parent=proxy)
def boot(ctx: Context) -> None:
    """Boot proxy on servers."""
    from shipyard.core import lifecycle
    from shipyard.core.lock import deploy_lock

    with deploy_lock(ctx):
        lifecycle.boot_proxies(ctx)


@command("reboot", parent=proxy)
@options(confirmed, click.option("--rolling", is_flag=True, help="Reboot proxy on hosts in sequence, rather than in parallel."))
def reboot(ctx: Context, confirmed: bool, rolling: bool) -> None:
    """Reboot proxy on servers (stop container, remove container, start new container)."""
    from shipyard.core.lock import deploy_lock
    from shipyard.plugins import proxy as operations

    if not confirmed and not click.confirm("This will cause a brief outage on each host. Are you sure?", err=True):
        return
    with deploy_lock(ctx):
        operations.reboot(ctx, rolling=rolling)


def _container(ctx: Context, action: str) -> None:
    from shipyard.core.lock import deploy_lock
    from shipyard.plugins import proxy as operations

    with deploy_lock(ctx):
        operations.container_command(ctx, action)


@command("start", parent=proxy)
def start(ctx: Context) -> None:
    """Start existing proxy container on servers."""
    _container(ctx, "start")


@command("stop", parent=proxy)
def stop(ctx: Context) -> None:
    """Stop existing proxy container on servers."""
    _container(ctx, "stop")


@command("restart", parent=proxy)
def restart(ctx: Context) -> None:
    """Restart existing proxy container on servers."""
    _container(ctx, "restart")


@command("details", parent=proxy)
def details(ctx: Context) -> None:
    """Show details about proxy container from servers."""
    from shipyard.plugins import proxy as operations

    operations.details(ctx)


@command("logs", parent=proxy)
@options(
    click.option("-s", "--since", help="Show logs since timestamp or relative time."),
    click.option("-n", "--lines", type=int, help="Number of log lines to pull from each server."),
    click.option("-g", "--grep", help="Show lines with grep match only."),
    click.option("-f", "--follow", is_flag=True, help="Follow logs on primary server (or specific host set by --hosts)."),
    click.option("-T", "--skip-timestamps", is_flag=True, help="Skip appending timestamps to logging output."),
)
def logs(ctx: Context, since: str | None, lines: int | None, grep: str | None, follow: bool, skip_timestamps: bool) -> None:
    """Show log lines from proxy on servers."""
    from shipyard.plugins import proxy as operations

    operations.logs(ctx, since=since, lines=lines, grep=grep, follow=follow, skip_timestamps=skip_timestamps)


@command("remove", parent=proxy)
@click.option("--force", is_flag=True, help="Force removing proxy when apps are still installed.")
def remove(ctx: Context, force: bool) -> None:
    """Remove proxy container and image from servers."""
    from shipyard.core.lock import deploy_lock
    from shipyard.plugins import proxy as operations

    with deploy_lock(ctx):
        operations.remove(ctx, force=force)
