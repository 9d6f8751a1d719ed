"""Top-level commands."""

from __future__ import annotations

import click

from shipyard.core.cli.runner import command, planned
from shipyard.core.context import Context

skip_push = click.option("-P", "--skip-push", is_flag=True, help="Skip image build and push.")
no_cache = click.option("--no-cache", is_flag=True, help="Build without using Docker's build cache.")
confirmed = click.option("-y", "--confirmed", is_flag=True, help="Proceed without confirmation question.")


@command("setup")
@skip_push
@no_cache
def setup(ctx: Context, skip_push: bool, no_cache: bool) -> None:
    """Setup all accessories, push the env, and deploy app to servers."""
    from shipyard.core import lifecycle

    lifecycle.setup(ctx, skip_push=skip_push, no_cache=no_cache)


@command("deploy")
@skip_push
@no_cache
def deploy(ctx: Context, skip_push: bool, no_cache: bool) -> None:
    """Deploy app to servers."""
    from shipyard.core import lifecycle

    lifecycle.deploy(ctx, skip_push=skip_push, no_cache=no_cache)


@command("redeploy")
@skip_push
@no_cache
def redeploy(ctx: Context, skip_push: bool, no_cache: bool) -> None:
    """Deploy app to servers without bootstrapping servers, starting the proxy and pruning."""
    from shipyard.core import lifecycle

    lifecycle.redeploy(ctx, skip_push=skip_push, no_cache=no_cache)


@command("rollback")
@click.argument("version_to_rollback", metavar="VERSION")
def rollback(ctx: Context, version_to_rollback: str) -> None:
    """Rollback app to VERSION."""
    from shipyard.core import lifecycle

    lifecycle.rollback(ctx, version_to_rollback)


@command("details")
def details(ctx: Context) -> None:
    """Show details about all containers."""
    from shipyard.core import reports

    reports.details(ctx)


@command("audit")
def audit(ctx: Context) -> None:
    """Show audit log from servers."""
    from shipyard.core import reports

    reports.audit(ctx)


@command("remove")
@confirmed
def remove(ctx: Context, confirmed: bool) -> None:
    """Remove the proxy, app, accessories, and registry session from servers."""
    from shipyard.core import app, registry
    from shipyard.core.lock import deploy_lock
    from shipyard.plugins import proxy

    if not confirmed and not click.confirm(
        f"This will remove {ctx.config.service}'s containers, images and directories (and the proxy, "
        "if no other app uses it) from the servers. Are you sure?", default=False, err=True
    ):
        return
    with deploy_lock(ctx):
        app.remove_everything(ctx)
        proxy.remove(ctx, force=False)
    if ctx.config.schema.registry.server and not ctx.config.schema.registry.is_local and ctx.config.schema.registry.username:
        registry.logout(ctx, skip_local=True, skip_remote=False)


@planned("upgrade")
@confirmed
@click.option("--rolling", is_flag=True, help="Upgrade one host at a time.")
def upgrade(ctx: Context, **_: object) -> None:
    """Upgrade from Kamal 1.x to 2.0."""


@command("broadcast")
@click.option("-m", "--message", required=True, help="The message to send.")
def broadcast(ctx: Context, message: str) -> None:
    """Send a message through the broadcast plugins (and the audit log)."""
    ctx.audit(message, broadcast="true")
    ctx.output.info(f"Broadcast: {message}")


@command("config")
def config(ctx: Context) -> None:
    """Show combined config (secrets redacted)."""
    from shipyard.core.config.show import render_config

    payload, text = render_config(ctx)
    ctx.output.data("config", payload, text)


@command("docs")
@click.argument("section", required=False)
def docs(ctx: Context, section: str | None) -> None:
    """Show configuration documentation (sections: see `shipyard docs`)."""
    from shipyard.core.docs import render_docs

    ctx.output.result(render_docs(section))


@command("init")
def init(ctx: Context) -> None:
    """Create config stub in config/deploy.yml and secrets stub in .shipyard."""
    from shipyard.core.scaffold import write_scaffold

    for line in write_scaffold(ctx.project_dir):
        ctx.output.info(line)


@command("version")
def version(ctx: Context) -> None:
    """Show shipyard version."""
    from shipyard.core import __version__

    ctx.output.data("version", {"version": __version__}, __version__)


@command("plugins")
@click.option("--hook", "hook_filter", metavar="NAME", help="Only plugins implementing this hook.")
def plugins(ctx: Context, hook_filter: str | None) -> None:
    """List plugins: name, source, version and the hooks each implements."""
    from shipyard.core.plugin_listing import render_plugins

    payload, text = render_plugins(ctx, hook_filter)
    ctx.output.data("plugins", payload, text)
