"""The audit log: every recorded action, appended to a file on the hosts.

``.shipyard/<service>[-<dest>]-audit.log`` in the SSH user's home, one line per action:
``[2026-11-28T12:00:00Z] [performer] [dest] [role] message``. It lives in the run
directory, so it survives ``shipyard remove``.

Lines are written in the background, one writer per host so each host's lines stay in
order, over the run's existing SSH connection: a deploy does not wait a round trip for
every line it records. Every queued line is written before the command exits
(``shipyard_unconfigure``), also when the command failed.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from shipyard.core import hookimpl

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.records import AuditEvent
    from shipyard.core.transport import CommandResult

# The line is an argument, never part of the script, so no message can run anything.
_APPEND = 'mkdir -p "$1" && printf "%s\\n" "$3" >> "$2"'
_STATE = "audit"


class AuditWriter:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.writers: dict[str, ThreadPoolExecutor] = {}
        self.pending: list[tuple[str, Future[CommandResult]]] = []

    def append(self, host: str, line: str) -> None:
        config = self.ctx.config
        writer = self.writers.setdefault(host, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit-{host}"))
        argv = ["sh", "-c", _APPEND, "sh", config.run_directory, config.audit_log, line]
        self.pending.append((host, writer.submit(lambda: self.ctx.connections.get(host).check(argv))))

    def flush(self) -> None:
        for host, future in self.pending:
            error = future.exception()
            if error is not None:
                self.ctx.output.warn(f"audit log not written on {host}: {error}")
        self.pending.clear()
        for writer in self.writers.values():
            writer.shutdown(wait=True)
        self.writers.clear()


@hookimpl(trylast=True)
def shipyard_audit(ctx: Context, event: AuditEvent) -> None:
    writer: AuditWriter = ctx.state.setdefault(_STATE, AuditWriter(ctx))
    line = event.line().replace("\n", "\\n")
    for host in event.hosts or ctx.hosts:
        writer.append(host, line)


@hookimpl
def shipyard_unconfigure(ctx: Context) -> None:
    writer: AuditWriter | None = ctx.state.pop(_STATE, None)
    if writer is not None:
        writer.flush()
