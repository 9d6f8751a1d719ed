"""A set of writer and reader targets with round-robin selection and health monitoring."""

from __future__ import annotations

import asyncio
import contextlib

from .godur import SECOND
from .health import describe_url, probe
from .logs import JsonLogger
from .options import HealthCheckConfig
from .upstream import ADDING, HEALTHY, UNHEALTHY, Target


class LoadBalancer:
    def __init__(
        self,
        writers: list[str],
        readers: list[str],
        health: HealthCheckConfig,
        logger: JsonLogger,
    ) -> None:
        self.writers = [Target(address) for address in writers]
        self.readers = [Target(address) for address in readers]
        self.health = health
        self.logger = logger
        self.healthy_writers: list[Target] = []
        self.healthy_readers: list[Target] = []
        self._writer_index = 0
        self._reader_index = 0
        self._checks: list[asyncio.Task[None]] = []
        self._all_healthy: asyncio.Event | None = None

    @property
    def targets(self) -> list[Target]:
        return self.writers + self.readers

    @property
    def has_readers(self) -> bool:
        return bool(self.readers)

    def addresses(self) -> list[str]:
        return [t.address for t in self.targets]

    # --- selection --------------------------------------------------------------------

    def pick(self, read: bool) -> Target | None:
        """Round-robin over healthy targets; reads prefer healthy readers."""
        if read and self.healthy_readers:
            readers = self.healthy_readers
            self._reader_index = (self._reader_index + 1) % len(readers)
            return readers[self._reader_index]
        writers = self.healthy_writers
        if not writers:
            return None
        self._writer_index = (self._writer_index + 1) % len(writers)
        return writers[self._writer_index]

    def _rebuild(self) -> None:
        self.healthy_writers = [t for t in self.writers if t.state == HEALTHY]
        self.healthy_readers = [t for t in self.readers if t.state == HEALTHY]
        if self._all_healthy is not None and all(t.state == HEALTHY for t in self.targets):
            self._all_healthy.set()

    def mark_all_healthy(self) -> None:
        for target in self.targets:
            target.state = HEALTHY
        self._rebuild()

    # --- health checks ----------------------------------------------------------------

    def start_health_checks(self) -> None:
        self._all_healthy = asyncio.Event()
        continuous = len(self.targets) > 1
        for target in self.targets:
            self._checks.append(asyncio.create_task(self._monitor(target, continuous)))

    def stop_health_checks(self) -> None:
        checks, self._checks = self._checks, []
        for task in checks:
            task.cancel()

    async def wait_until_healthy(self, timeout: float) -> bool:
        assert self._all_healthy is not None
        if all(t.state == HEALTHY for t in self.targets):
            return True
        try:
            await asyncio.wait_for(self._all_healthy.wait(), max(timeout, 0))
        except TimeoutError:
            return False
        return True

    async def _monitor(self, target: Target, continuous: bool) -> None:
        """Check at once, then every interval.  A lone target stops once healthy (as Go)."""
        url = describe_url(target.address, self.health)
        interval = max(self.health.interval / SECOND, 0.01)
        timeout = max(self.health.timeout / SECOND, 0.001)
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                error = await probe(target.address, self.health, timeout)
                self._record(target, error, url)
                if not continuous and target.state == HEALTHY:
                    return
                await asyncio.sleep(interval)

    def _record(self, target: Target, error: str | None, url: str) -> None:
        was = target.state
        if error is None:
            target.state = HEALTHY
        else:
            self.logger.info("Healthcheck failed", url=url, error=error)
            if was == HEALTHY:
                target.state = UNHEALTHY
        if target.state != was:
            self.logger.info(
                "Target health updated", target=target.address, state=target.state, was=was
            )
            self._rebuild()

    # --- retirement -------------------------------------------------------------------

    async def drain(self, timeout: float, retire: bool = True) -> None:
        """Drain every target; a retired balancer (replaced by a deploy) stops checking too."""
        if retire:
            self.stop_health_checks()
        await asyncio.gather(*(t.drain(timeout, retire) for t in self.targets))

    def dispose(self) -> None:
        self.stop_health_checks()
        for target in self.targets:
            target.dispose()


__all__ = ["ADDING", "HEALTHY", "UNHEALTHY", "LoadBalancer"]
