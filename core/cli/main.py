"""The ``shipyard`` command: Kamal's command tree, loaded lazily, plus plugin commands and
config aliases."""

from __future__ import annotations

import importlib
import sys

import click

from shipyard.core.cli.options import GLOBAL_PARAMS
from shipyard.core.cli.tree import TOP_LEVEL

_PLUGIN_COMMANDS = "shipyard.plugin_commands"


class ShipyardGroup(click.Group):
    """Built-in commands come from the static tree; anything else is asked of the
    plugins (``shipyard_commands`` hook), then of the config's ``aliases``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*TOP_LEVEL, *self._plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in TOP_LEVEL:
            module, attribute, _ = TOP_LEVEL[name]
            found: click.Command = getattr(importlib.import_module(f"shipyard.core.cli.{module}"), attribute)
            return found
        plugin_command = self._plugin_commands(ctx).get(name)
        if plugin_command is not None:
            return plugin_command
        return _alias_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help for built-ins comes from the table: listing them imports nothing.
        rows = [(name, TOP_LEVEL[name][2]) for name in sorted(TOP_LEVEL)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
        extra = self._plugin_commands(ctx)
        if extra:
            with formatter.section("Plugin commands"):
                formatter.write_dl([(n, c.get_short_help_str(60)) for n, c in sorted(extra.items())])

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        root = ctx.find_root()
        if _PLUGIN_COMMANDS not in root.meta:
            root.meta[_PLUGIN_COMMANDS] = _collect_plugin_commands(ctx)
        commands: dict[str, click.Command] = root.meta[_PLUGIN_COMMANDS]
        return commands


def _collect_plugin_commands(ctx: click.Context) -> dict[str, click.Command]:
    if not _third_party_plugins_present():
        return {}  # built-ins add no commands: skip loading plugins, keep start-up fast
    from shipyard.core.cli.runner import manager_for
    from shipyard.core.errors import ShipyardError

    collector = click.Group("plugins")
    try:
        manager_for(ctx).hooks.commands(collector)
    except ShipyardError as error:
        # A broken plugin must not take `--help` down with it; the command itself reports it.
        click.echo(f"Warning: {error}", err=True)
        return {}
    clashes = set(collector.commands) & set(TOP_LEVEL)
    for name in clashes:
        click.echo(f"Warning: a plugin command `{name}` clashes with the built-in command; ignored", err=True)
    return {n: c for n, c in collector.commands.items() if n not in clashes}


def _third_party_plugins_present() -> bool:
    import os

    from shipyard.core.entrypoints import ENTRYPOINT_GROUP, PROJECT_HOOKS_FILE, entry_points

    autoload = os.environ.get("SHIPYARD_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
    return os.path.isfile(PROJECT_HOOKS_FILE) or (autoload and bool(entry_points(ENTRYPOINT_GROUP)))


def _alias_command(ctx: click.Context, name: str) -> click.Command | None:
    """``aliases: {console: app exec -i --reuse "bin/rails c"}`` → ``shipyard console``."""
    import shlex
    from pathlib import Path

    from shipyard.core.cli.options import collect
    from shipyard.core.errors import ShipyardError

    options = collect(ctx)
    try:
        from shipyard.core.config.loader import load_config

        config = load_config(Path.cwd(), config_file=options.config_file, destination=options.destination)
    except ShipyardError:
        return None
    alias = config.schema.aliases.get(name)
    if alias is None:
        return None

    def expand(args: tuple[str, ...]) -> None:
        cli.main(args=[*shlex.split(alias), *args], prog_name="shipyard", standalone_mode=True)

    expanded = click.Command(
        name,
        callback=expand,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
        help=f"Alias for `{alias}`.",
        add_help_option=False,
    )
    return expanded


cli = ShipyardGroup(
    "shipyard",
    help="Deploy containerised web apps to your own servers with zero downtime.",
    params=list(GLOBAL_PARAMS),
    context_settings={"help_option_names": ["--help"], "max_content_width": 120},
)


def main(argv: list[str] | None = None) -> None:
    """The console script. Everything a command does is finished by the time click
    returns (``unconfigure`` has flushed the audit log, connections are closed), so the
    process ends with ``os._exit`` after flushing the output: Python's own shutdown adds
    a quarter of a second here, for nothing."""
    import os

    try:
        cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="shipyard")
        code = 0
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            sys.stderr.write(exit_.code + "\n")
            code = 1
        else:
            code = exit_.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        # Under a profiler, coverage or a debugger: let them write their results.
        raise SystemExit(code)
    os._exit(code)
