"""``shipyard plugins``: every plugin, where it comes from, and the hooks it implements;
shell hook scripts are listed too (source ``shell``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.core.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.core.context import Context


def render_plugins(ctx: Context, hook_filter: str | None) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    for info in ctx.plugins.infos():
        rows.append(
            {
                "name": info.name,
                "source": info.source,
                "version": info.version,
                "distribution": info.distribution,
                "location": info.location,
                "hooks": list(info.hooks),
            }
        )
    rows += _shell_rows(ctx)
    if hook_filter:
        wanted = hook_filter.removeprefix("shipyard_").replace("-", "_")
        rows = [row for row in rows if wanted in row["hooks"]]
    return rows, _table(rows)


def _shell_rows(ctx: Context) -> list[dict[str, Any]]:
    bridge = ctx.plugins.get_plugin("shell_hooks")
    if bridge is None:
        return []
    try:
        found = bridge.scripts(ctx)
    except ShipyardError:
        return []  # no usable config: no project hooks directory to look in
    return [
        {
            "name": script.hook,
            "source": "shell",
            "version": None,
            "distribution": None,
            "location": str(script.path),
            "hooks": [script.hook.replace("-", "_")],
        }
        for script in found
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "SOURCE", "VERSION", "HOOKS")
    cells = [
        (row["name"], row["source"], row["version"] or "-", ", ".join(row["hooks"]) or "-")
        for row in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(3)]
    lines = []
    for cell in [header, *cells]:
        lines.append("  ".join(str(cell[i]).ljust(widths[i]) for i in range(3)) + "  " + cell[3])
    return "\n".join(lines)
