"""Kamal's global options, accepted on every command, before or after its name.

``shipyard -d staging deploy`` and ``shipyard deploy -d staging`` mean the same thing: each
command (and each group) carries the same option objects, and every value given on the
command line is stored on the root context, the innermost one winning. ``-h`` is
``--hosts`` as in Kamal; help is ``--help`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

if TYPE_CHECKING:
    from shipyard.core.context import GlobalOptions

_STORE = "shipyard.global_options"


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    """``-h a,b -h c`` → (a, b, c): lists may be repeated or comma-separated."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    source = ctx.get_parameter_source(param.name or "")
    if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and param.name:
        store: dict[str, Any] = ctx.find_root().meta.setdefault(_STORE, {})
        if param.name in ("hosts", "roles"):
            value = _split(value)
        if param.name == "no_plugins":
            value = tuple(store.get("no_plugins", ())) + tuple(value)
        store[param.name] = value
    return value


def _option(*decls: str, **kwargs: Any) -> click.Option:
    return click.Option(list(decls), expose_value=False, callback=_remember, **kwargs)


GLOBAL_PARAMS: list[click.Parameter] = [
    _option("-v", "--verbose", is_flag=True, default=False, help="Detailed logging."),
    _option("-q", "--quiet", is_flag=True, default=False, help="Minimal logging."),
    _option("--version", "version", metavar="VERSION", help="Run commands against a specific app version."),
    _option("-p", "--primary", is_flag=True, default=False, help="Run commands only on primary host instead of all."),
    _option("-h", "--hosts", multiple=True, metavar="HOSTS",
            help="Run commands on these hosts instead of all (separate by comma, supports wildcards with *)."),
    _option("-r", "--roles", multiple=True, metavar="ROLES",
            help="Run commands on these roles instead of all (separate by comma, supports wildcards with *)."),
    _option("-c", "--config-file", metavar="PATH", help="Path to config file [config/deploy.yml]."),
    _option("-d", "--destination", metavar="NAME", help="Specify destination to be used for config file (staging -> deploy.staging.yml)."),
    _option("-H", "--skip-hooks", is_flag=True, default=False, help="Don't run hooks (shell hooks and .shipyard/hooks.py)."),
    _option("--json", is_flag=True, default=False, help="One JSON object per line, for machines."),
    _option("--trace", is_flag=True, default=False, help="Print every plugin hook call, its arguments and result."),
    _option("--no-plugin", "no_plugins", multiple=True, metavar="NAME", help="Disable a plugin by name (repeatable)."),
    _option("--lock-wait", is_flag=True, default=False, help="Wait for the deploy lock instead of failing."),
    _option("--lock-wait-timeout", type=float, metavar="SECONDS", help="Seconds to wait for the lock [900]."),
    _option("--lock-wait-interval", type=float, metavar="SECONDS", help="Seconds between lock polls [15]."),
]


def collect(ctx: click.Context) -> GlobalOptions:
    """The global options given anywhere on this command line."""
    from shipyard.core.context import GlobalOptions

    given: dict[str, Any] = dict(ctx.find_root().meta.get(_STORE, {}))
    return GlobalOptions(**{k: v for k, v in given.items() if v is not None})


def disabled_plugins(ctx: click.Context) -> tuple[str, ...]:
    return tuple(ctx.find_root().meta.get(_STORE, {}).get("no_plugins", ()))
