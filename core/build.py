"""Build and push the app image: the hook sequence that ``build push`` and ``deploy`` run.

Core never talks to Docker: :func:`build_and_push` only fires the hooks, in Kamal's order::

    pre_connect (once per process) → pre_build → build → push → post_push

The built-in ``docker_build`` plugin answers ``build`` and ``push`` with the local engine
and does the local checks (engine reachable, local registry up or registry login) first
thing in ``pre_build``, before the project's own pre-build hooks.

Options of one build that the hookspecs do not carry (``--no-cache``) travel as a
:class:`BuildOptions` record attached to the context: a plugin replacing the build step
reads them with :func:`build_options`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.records import PushResult


@dataclass(frozen=True)
class BuildOptions:
    """How this invocation wants the image built."""

    no_cache: bool = False  # `--no-cache`: build every step again


_OPTIONS: weakref.WeakKeyDictionary[Context, BuildOptions] = weakref.WeakKeyDictionary()


def set_build_options(ctx: Context, options: BuildOptions) -> None:
    _OPTIONS[ctx] = options


def build_options(ctx: Context) -> BuildOptions:
    """The options of the build ``ctx`` is running (defaults when none were given)."""
    return _OPTIONS.get(ctx, BuildOptions())


def build_and_push(ctx: Context, *, no_cache: bool = False) -> PushResult:
    """Build ``ctx.version`` and push it: ``pre_connect`` (if this run has not fired it
    yet), ``pre_build``, ``build``, ``push``, ``post_push``. Returns what was pushed.

    Any failure raises a :class:`~shipyard.core.errors.ShipyardError`; a failing
    ``pre_build`` stops before anything is built, a failing build before anything is
    pushed.
    """
    set_build_options(ctx, BuildOptions(no_cache=no_cache))
    ctx.connections.pre_connect()
    ctx.hooks.pre_build(ctx)
    built = ctx.hooks.build(ctx)
    pushed = ctx.hooks.push(ctx, built)
    ctx.hooks.post_push(ctx, pushed)
    return pushed
