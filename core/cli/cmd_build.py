"""`shipyard build ...`: build, push and pull the app image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from shipyard.core.cli.runner import command, group
from shipyard.core.context import Context

if TYPE_CHECKING:
    from types import ModuleType

build = group("build", help="Build application image")

no_cache_option = click.option("--no-cache", is_flag=True, help="Build without using Docker's build cache.")


def _docker_build(ctx: Context) -> ModuleType:
    """The built-in builder, for the commands that are about it rather than about the
    build hooks (a plugin replacing the build step does not change what these show)."""
    from shipyard.core.errors import ShipyardError

    if ctx.plugins.is_blocked("docker_build") or not ctx.plugins.has_plugin("docker_build"):
        raise ShipyardError("the docker_build plugin is disabled (--no-plugin / SHIPYARD_DISABLE_PLUGINS)")
    from shipyard.plugins import docker_build

    return docker_build


@command("deliver", parent=build)
@no_cache_option
def deliver(ctx: Context, no_cache: bool) -> None:
    """Build app and push app image to registry then pull image on servers."""
    from shipyard.core import lifecycle

    lifecycle.deliver(ctx, build=True, no_cache=no_cache)


@command("push", parent=build)
@no_cache_option
def push(ctx: Context, no_cache: bool) -> None:
    """Build and push app image to registry."""
    from shipyard.core.build import build_and_push

    build_and_push(ctx, no_cache=no_cache)


@command("pull", parent=build)
def pull(ctx: Context) -> None:
    """Pull app image from registry onto servers."""
    from shipyard.core import lifecycle

    ctx.connections.pre_connect()
    lifecycle.pull(ctx)


@command("details", parent=build)
def details(ctx: Context) -> None:
    """Show build setup."""
    plugin = _docker_build(ctx)
    info = plugin.build_details(ctx)
    ctx.output.data("build_details", info, plugin.details_text(info))


@command("create", parent=build)
def create(ctx: Context) -> None:
    """Create a build setup (the classic builder needs none)."""
    ctx.output.result("Nothing to create: shipyard builds with the local engine's classic builder, which needs no setup")


@command("remove", parent=build)
def remove(ctx: Context) -> None:
    """Remove build setup."""
    ctx.output.result("Nothing to remove: shipyard builds with the local engine's classic builder, which needs no setup")


@command("dev", parent=build)
@no_cache_option
def dev(ctx: Context, no_cache: bool) -> None:
    """Build the working tree into the local image store, tagged :dirty."""
    _docker_build(ctx).build_dev(ctx, no_cache=no_cache)
