"""How every command runs: build the context, load plugins, fire the command hooks, run
the body, report errors as one line each, and exit with the right code.

Plugin authors make CLI commands with :func:`command` too, so their commands get the
global options, a :class:`~shipyard.core.context.Context` and the same error handling::

    from shipyard.core.cli.runner import command

    @command("hello", help="Say hello to every host.")
    def hello(ctx):
        ctx.output.info("hello")
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from shipyard.core.cli.options import GLOBAL_PARAMS, collect
from shipyard.core.context import Context
from shipyard.core.errors import NotImplementedYet, ShipyardError
from shipyard.core.output import NORMAL, QUIET, VERBOSE, Output

_MANAGER = "shipyard.plugin_manager"


F = TypeVar("F", bound=Callable[..., Any])


def command(
    name: str, *, parent: click.Group | None = None, **click_kwargs: Any
) -> Callable[[Callable[..., None]], click.Command]:
    """Turn ``body(ctx, **params)`` into a click command carrying the global options.

    With ``parent`` (the ``app`` group for ``app boot``) the command is added to it, and
    hooks see ``ctx.command == "app"`` and ``ctx.subcommand == "boot"``.
    """

    def decorate(body: Callable[..., None]) -> click.Command:
        @functools.wraps(body)
        def callback(**params: Any) -> None:
            if parent is None:
                run_body(name, None, lambda ctx: body(ctx, **params))
            else:
                run_body(parent.name or "", name, lambda ctx: body(ctx, **params))

        click_kwargs.setdefault("help", inspect.cleandoc(body.__doc__ or "") or None)
        # The options decorated onto ``body`` (click keeps them in __click_params__, last
        # decorator first), then Kamal's global options.
        own = list(reversed(getattr(body, "__click_params__", [])))
        cmd = click.Command(name, callback=callback, params=[*own, *GLOBAL_PARAMS], **click_kwargs)
        if parent is not None:
            parent.add_command(cmd)
        return cmd

    return decorate


def planned(
    name: str, *, parent: click.Group | None = None, **click_kwargs: Any
) -> Callable[[Callable[..., None]], click.Command]:
    """A command whose capability has not landed yet: it exits 2 with
    ``not implemented yet: <command>`` and never pretends to succeed."""

    def decorate(body: Callable[..., None]) -> click.Command:
        full = f"{parent.name} {name}" if parent is not None else name

        def refuse(ctx: Context, **_: Any) -> None:
            raise NotImplementedYet(full)

        functools.update_wrapper(refuse, body)
        return command(name, parent=parent, **click_kwargs)(refuse)

    return decorate


def group(name: str, **click_kwargs: Any) -> click.Group:
    grp = click.Group(name, **click_kwargs)
    grp.params.extend(GLOBAL_PARAMS)
    return grp


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click option decorators as one, for options shared by commands."""

    def decorate(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return decorate


def manager_for(click_ctx: click.Context) -> Any:
    """The plugin manager of this invocation, loaded once (command lookup may have loaded
    it already to find plugin commands)."""
    from shipyard.core.cli.options import disabled_plugins
    from shipyard.core.plugins import ShipyardPluginManager

    root = click_ctx.find_root()
    manager = root.meta.get(_MANAGER)
    if manager is None:
        options = collect(click_ctx)
        manager = ShipyardPluginManager()
        manager.load(project_dir=Path.cwd(), disabled=disabled_plugins(click_ctx), project_hooks=not options.skip_hooks)
        root.meta[_MANAGER] = manager
    return manager


def run_body(command_name: str, subcommand: str | None, body: Callable[[Context], None]) -> None:
    click_ctx = click.get_current_context()
    options = collect(click_ctx)
    verbosity = VERBOSE if options.verbose else QUIET if options.quiet else NORMAL
    output = Output(verbosity=verbosity, json_mode=options.json)
    started = time.monotonic()
    ctx: Context | None = None
    error: BaseException | None = None
    exit_code = 0
    try:
        manager = manager_for(click_ctx)
        if options.trace:
            manager.enable_trace(output)
        for warning in manager.warnings:
            output.warn(warning)
        ctx = Context(options=options, output=output, plugins=manager, command=command_name, subcommand=subcommand)
        ctx.hooks.configure(ctx)
        ctx.hooks.pre_command(ctx)
        body(ctx)
    except ShipyardError as failure:
        error, exit_code = failure, failure.exit_code
    except KeyboardInterrupt as interrupt:
        error, exit_code = interrupt, 130
    finally:
        if ctx is not None:
            exit_code = _finish(ctx, error, exit_code, time.monotonic() - started)
    if error is not None:
        _report(output, error, verbose=options.verbose)
    if exit_code:
        sys.exit(exit_code)


def _finish(ctx: Context, error: BaseException | None, exit_code: int, runtime: float) -> int:
    """post-command and unconfigure always run; their failures are reported, and only
    change the exit code of a command that had succeeded."""
    from shipyard.core.records import CommandOutcome

    outcome = CommandOutcome(exit_code=exit_code, error=error, runtime=runtime)
    steps: list[Callable[[], None]] = [
        lambda: ctx.hooks.post_command(ctx, outcome),
        lambda: ctx.hooks.unconfigure(ctx),
    ]
    for step in steps:
        try:
            step()
        except ShipyardError as failure:
            _report(ctx.output, failure, verbose=ctx.options.verbose)
            exit_code = exit_code or failure.exit_code
    ctx.connections.close_all()
    return exit_code


def _report(output: Output, error: BaseException, *, verbose: bool) -> None:
    if isinstance(error, KeyboardInterrupt):
        output.error("Interrupted")
        return
    assert isinstance(error, ShipyardError)
    if verbose and error.__cause__ is not None:
        cause = "".join(traceback.format_exception(error.__cause__))
        output.err.write(output.scrub(cause))
    if output.json_mode:
        output.error(str(error), kind=type(error).__name__, exit_code=error.exit_code)
        return
    for line in error.lines():
        output.err.write(output.scrub(line) + "\n")
    output.err.flush()

