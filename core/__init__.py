"""shipyard's core: the lifecycle (hookspecs), configuration, plugin loading and the CLI.

Plugins import the marker from here::

    from shipyard.core import hookimpl

    @hookimpl
    def shipyard_pre_deploy(ctx): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pluggy

    hookimpl: pluggy.HookimplMarker


def __getattr__(name: str) -> Any:
    # pluggy is imported on first use, not at start-up: `shipyard --help` never needs it.
    if name == "hookimpl":
        import pluggy

        from shipyard.core.hookspecs import PROJECT

        marker = pluggy.HookimplMarker(PROJECT)
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
