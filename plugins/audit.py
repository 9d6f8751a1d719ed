"""The audit log: every recorded action, appended to a file on the hosts.

``.shipyard/<service>[-<dest>]-audit.log`` in the SSH user's home, one line per action:
``[2026-11-28T12:00:00Z] [performer] [dest] [role] message``. It lives in the run
directory, so it survives ``shipyard remove``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core import hookimpl
from shipyard.core.parallel import on_hosts

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.records import AuditEvent
    from shipyard.core.transport import CommandResult, Transport

# The line is an argument, never part of the script, so no message can run anything.
_APPEND = 'mkdir -p "$1" && printf "%s\\n" "$3" >> "$2"'


@hookimpl(trylast=True)
def shipyard_audit(ctx: Context, event: AuditEvent) -> None:
    line = event.line().replace("\n", "\\n")
    directory, path = ctx.config.run_directory, ctx.config.audit_log

    def append(transport: Transport) -> CommandResult:
        return transport.check(["sh", "-c", _APPEND, "sh", directory, path, line])

    on_hosts(ctx, event.hosts or ctx.hosts, append).raise_failures()
