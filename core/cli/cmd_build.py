"""`shipyard build ...`: build, push and pull the app image."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import group, planned
from shipyard.core.context import Context

build = group("build", help="Build application image")


@planned("deliver", parent=build)
@click.option("--no-cache", is_flag=True, help="Build without using Docker's build cache.")
def deliver(ctx: Context, **_: object) -> None:
    """Build app and push app image to registry then pull image on servers."""


@planned("push", parent=build)
@click.option("--no-cache", is_flag=True, help="Build without using Docker's build cache.")
def push(ctx: Context, **_: object) -> None:
    """Build and push app image to registry."""


@planned("pull", parent=build)
def pull(ctx: Context) -> None:
    """Pull app image from registry onto servers."""


@planned("details", parent=build)
def details(ctx: Context) -> None:
    """Show build setup."""


@planned("create", parent=build)
def create(ctx: Context) -> None:
    """Create a build setup (the classic builder needs none)."""


@planned("remove", parent=build)
def remove(ctx: Context) -> None:
    """Remove build setup."""


@planned("dev", parent=build)
@click.option("--no-cache", is_flag=True, help="Build without using Docker's build cache.")
def dev(ctx: Context, **_: object) -> None:
    """Build the working tree into the local image store, tagged -dirty."""
