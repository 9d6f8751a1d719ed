"""`shipyard lock ...`: the deploy lock on the primary host."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, planned
from shipyard.core.context import Context

lock = group("lock", help="Manage the deploy lock")


@planned("acquire", parent=lock)
@click.option("-m", "--message", required=True, help="A lock message.")
def acquire(ctx: Context, **_: object) -> None:
    """Acquire the deploy lock."""


@planned("release", parent=lock)
def release(ctx: Context) -> None:
    """Release the deploy lock."""


@planned("status", parent=lock)
def status(ctx: Context) -> None:
    """Report lock status."""
