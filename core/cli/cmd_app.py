"""`shipyard app ...`: manage the application's containers."""

from __future__ import annotations

from types import ModuleType

import click

from shipyard.core.cli.runner import command, group, options
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


def _ops() -> ModuleType:
    # The app module imports the lifecycle; only commands that run pay for it.
    from shipyard.core import app as operations

    return operations


@command("boot", parent=app)
def boot(ctx: Context) -> None:
    """Boot app on servers (or reboot app if already running)."""
    _ops().boot(ctx)


@command("start", parent=app)
def start(ctx: Context) -> None:
    """Start existing app container on servers."""
    _ops().start(ctx)


@command("stop", parent=app)
def stop(ctx: Context) -> None:
    """Stop app container on servers."""
    _ops().stop(ctx)


@command("details", parent=app)
def details(ctx: Context) -> None:
    """Show details about app containers."""
    _ops().details(ctx)


# Options go before the command; everything from the command's first word on is the
# command, as with `docker exec` (so `app exec ls -la` works).
@command("exec", parent=app, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Execute command over ssh for an interactive shell (use for console/bash).")
@click.option("--reuse", is_flag=True, help="Reuse currently running container instead of starting a new one.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY:VALUE", help="Set environment variables for the command.")
@click.option("--detach", is_flag=True, help="Execute command in a detached container.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(ctx: Context, interactive: bool, reuse: bool, env: tuple[str, ...], detach: bool, cmd: tuple[str, ...]) -> None:
    """Execute a custom command on servers within the app container (use --help to show options)."""
    _ops().exec_(ctx, cmd, interactive=interactive, reuse=reuse, env=env, detach=detach)


@command("containers", parent=app)
def containers(ctx: Context) -> None:
    """Show app containers on servers."""
    _ops().containers(ctx)


@command("images", parent=app)
def images(ctx: Context) -> None:
    """Show app images on servers."""
    _ops().images(ctx)


@command("logs", parent=app)
@log_options
@click.option("--container-id", help="Docker container ID to fetch logs.")
def logs(ctx: Context, since: str | None, lines: int | None, grep: str | None, grep_options: str | None,
         follow: bool, skip_timestamps: bool, container_id: str | None) -> None:
    """Show log lines from app on servers (use --help to show options)."""
    _ops().logs(ctx, since=since, lines=lines, grep=grep, grep_options=grep_options, follow=follow,
                skip_timestamps=skip_timestamps, container_id=container_id)


@command("stale_containers", parent=app)
@click.option("-s", "--stop", is_flag=True, help="Stop the stale containers found.")
def stale_containers(ctx: Context, stop: bool) -> None:
    """Detect app stale containers."""
    _ops().stale_containers(ctx, stop=stop)


@command("version", parent=app)
def version(ctx: Context) -> None:
    """Show app version currently running on servers."""
    _ops().version(ctx)


@command("maintenance", parent=app)
@click.option("--drain-timeout", type=int, help="How long to allow in-flight requests to complete (defaults to drain_timeout from config).")
@click.option("--message", help="Message to display to clients while stopped.")
def maintenance(ctx: Context, drain_timeout: int | None, message: str | None) -> None:
    """Set the app to maintenance mode."""
    _ops().maintenance(ctx, drain_timeout=drain_timeout, message=message)


@command("live", parent=app)
def live(ctx: Context) -> None:
    """Set the app to live mode."""
    _ops().live(ctx)


@command("remove", parent=app)
def remove(ctx: Context) -> None:
    """Remove app containers and images from servers."""
    _ops().remove(ctx)
