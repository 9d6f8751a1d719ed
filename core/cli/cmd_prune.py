"""`shipyard prune ...`: old containers and images."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, planned
from shipyard.core.context import Context

prune = group("prune", help="Prune old application images and containers")


@planned("all", parent=prune)
def all_(ctx: Context) -> None:
    """Prune unused images and stopped containers."""


@planned("containers", parent=prune)
@click.option("--retain", type=int, help="Number of containers to retain [retain_containers, 5].")
def containers(ctx: Context, **_: object) -> None:
    """Prune all stopped containers, except the last n (default 5)."""


@planned("images", parent=prune)
def images(ctx: Context) -> None:
    """Prune unused images."""
