"""`shipyard lock ...`: the deploy lock on the primary host."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, group
from shipyard.core.context import Context

lock = group("lock", help="Manage the deploy lock")


@command("acquire", parent=lock)
@click.option("-m", "--message", required=True, help="A lock message.")
def acquire(ctx: Context, message: str) -> None:
    """Acquire the deploy lock."""
    from shipyard.core import lock as deploy_lock

    deploy_lock.acquire(ctx, message)
    ctx.output.info(f"Acquired the deploy lock on {ctx.config.primary_host}")


@command("release", parent=lock)
def release(ctx: Context) -> None:
    """Release the deploy lock."""
    from shipyard.core import lock as deploy_lock

    if deploy_lock.status(ctx) is None:
        ctx.output.info(deploy_lock.NO_LOCK)
        return
    deploy_lock.release(ctx)
    ctx.output.info(f"Released the deploy lock on {ctx.config.primary_host}")


@command("status", parent=lock)
def status(ctx: Context) -> None:
    """Report lock status."""
    from shipyard.core import lock as deploy_lock

    details = deploy_lock.status(ctx)
    ctx.output.data("lock", {"locked": details is not None, "details": details}, details or deploy_lock.NO_LOCK)
