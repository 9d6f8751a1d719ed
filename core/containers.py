"""What the app looks like on one host: its containers, read with one ``docker ps``.

Every step that needs to know which container is old, which one clashes with the new
name, or which are stale reads it from one listing, so a deploy does one round trip per
host for all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shipyard.core import remote_docker

if TYPE_CHECKING:
    from shipyard.core.config.model import Config
    from shipyard.core.transport import Transport

_FORMAT = '{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label "role"}}\t{{.Image}}'


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    state: str  # running | exited | created | dead | paused | restarting
    role: str
    image: str

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting")


@dataclass(frozen=True)
class AppContainers:
    """The app's containers on one host, newest first (``docker ps`` order)."""

    host: str
    containers: tuple[Container, ...]

    def of_role(self, role: str) -> list[Container]:
        return [c for c in self.containers if c.role == role]

    def named(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    def current(self, config: Config, role: str, *, excluding: str | None = None) -> Container | None:
        """The container serving ``role`` now: the newest running one, preferring the
        image tagged latest (as Kamal does)."""
        running = [c for c in self.of_role(role) if c.running and c.name != excluding]
        latest = config.image_ref(config.latest_tag)
        return next((c for c in running if c.image == latest), running[0] if running else None)

    def version_of(self, config: Config, container: Container) -> str:
        return container.name.removeprefix(config.container_prefix(container.role) + "-")


def app_filter(config: Config, role: str | None = None) -> dict[str, str]:
    return remote_docker.labels(config.service, role, config.destination)


def listing_argv(config: Config) -> list[str]:
    return remote_docker.ps(filters=app_filter(config), all_states=True, fmt=_FORMAT)


def parse_listing(host: str, stdout: str) -> AppContainers:
    found = []
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            found.append(Container(*parts))
    return AppContainers(host, tuple(found))


def list_app_containers(transport: Transport, config: Config) -> AppContainers:
    return parse_listing(transport.host, transport.check(listing_argv(config)).stdout)
