"""The rolling boot plan (``shipyard_boot_plan``): hosts in groups of ``boot.limit``.

``boot.limit`` is a number of hosts, or ``"N%"`` of all hosts (accessory hosts included,
at least one), as in Kamal. Without it every host boots at once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from shipyard.core import hookimpl

if TYPE_CHECKING:
    from shipyard.core.context import Context


def group_size(limit: int | str | None, all_hosts: int, hosts: int) -> int:
    if limit is None:
        return max(hosts, 1)
    if isinstance(limit, str):
        return max(1, math.floor(all_hosts * int(limit.rstrip("%")) / 100))
    return limit


@hookimpl(trylast=True)
def shipyard_boot_plan(ctx: Context, hosts: list[str]) -> list[list[str]]:
    size = group_size(ctx.config.schema.boot.limit, len(ctx.config.all_hosts), len(hosts))
    return [hosts[start : start + size] for start in range(0, len(hosts), size)]
