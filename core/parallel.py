"""Fan work out over hosts, keep every host's outcome, and report failures together.

A multi-host step never lets the first exception hide what happened on the other hosts:
:func:`on_hosts` waits for all of them and returns a :class:`HostResults`; callers print
the successes and then call :meth:`HostResults.raise_failures`, which raises one
:class:`~shipyard.core.errors.HostsFailed` with one line per failed host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from shipyard.core.errors import HostsFailed

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

T = TypeVar("T")

DEFAULT_CONCURRENCY = 30  # Kamal's sshkit.max_concurrent_starts default


@dataclass
class HostResults(Generic[T]):
    """Per-host outcomes of one step, in the order the hosts were given."""

    succeeded: dict[str, T] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_failures(self) -> None:
        if self.failed:
            raise HostsFailed(self.failed)


def on_hosts(
    ctx: Context,
    hosts: Iterable[str],
    work: Callable[[Transport], T],
    *,
    concurrency: int | None = None,
    progress: str | None = None,
) -> HostResults[T]:
    """Run ``work(transport)`` for every host in parallel, bounded by ``concurrency``
    (default: config ``sshkit.max_concurrent_starts``), and collect every outcome.
    ``progress`` names the step on a live progress display (terminals only)."""
    ordered = list(dict.fromkeys(hosts))
    results: HostResults[T] = HostResults()
    if not ordered:
        return results
    limit = concurrency or ctx.max_concurrency

    with ctx.output.progress(progress or "", total=len(ordered), enabled=progress is not None) as bar:

        def attempt(host: str) -> tuple[str, T | None, BaseException | None]:
            try:
                return host, work(ctx.connections.get(host)), None
            except Exception as error:  # every host's failure is reported, none hides another
                return host, None, error
            finally:
                bar.advance()

        with ThreadPoolExecutor(max_workers=min(limit, len(ordered)), thread_name_prefix="host") as pool:
            outcomes = list(pool.map(attempt, ordered))
    for host, value, error in outcomes:
        if error is not None:
            results.failed[host] = error
        else:
            results.succeeded[host] = value  # type: ignore[assignment]
    return results


def report(ctx: Context, results: HostResults[T], render: Callable[[T], str | None]) -> None:
    """Print each host's answer (``render`` → text, or None for nothing) with its host
    prefix, in host order, then raise one error listing every host that failed."""
    ctx.output.set_hosts([*results.succeeded, *results.failed])
    for host, value in results.succeeded.items():
        text = render(value)
        if text:
            ctx.output.result(text, host=host)
    results.raise_failures()
