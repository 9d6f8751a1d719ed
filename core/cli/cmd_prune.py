"""`shipyard prune ...`: old containers and images."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, group
from shipyard.core.context import Context

prune = group("prune", help="Prune old application images and containers")


@command("all", parent=prune)
def all_(ctx: Context) -> None:
    """Prune unused images and stopped containers."""
    from shipyard.core import lifecycle
    from shipyard.core.lock import deploy_lock

    with deploy_lock(ctx):
        lifecycle.prune(ctx)


@command("containers", parent=prune)
@click.option("--retain", type=int, help="Number of containers to retain [retain_containers, 5].")
def containers(ctx: Context, retain: int | None) -> None:
    """Prune all stopped containers, except the last n (default 5)."""
    from shipyard.plugins import prune as pruning

    pruning.prune_command(ctx, containers=True, images=False, retain=retain)


@command("images", parent=prune)
def images(ctx: Context) -> None:
    """Prune unused images."""
    from shipyard.plugins import prune as pruning

    pruning.prune_command(ctx, containers=False, images=True, retain=None)
