"""Small typed records that hooks receive or return.

They are plain frozen dataclasses so plugins can build them without importing anything
heavy. The hookspecs module says which hook uses which record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Veto:
    """Returned by a ``shipyard_pre_deploy`` implementation to stop the deploy.

    ``reason`` is shown to the user, e.g. ``CI status for abc123 is failure``.
    """

    reason: str


@dataclass(frozen=True)
class CommandOutcome:
    """How a command invocation ended, given to ``shipyard_post_command``."""

    exit_code: int
    error: BaseException | None
    runtime: float  # seconds


@dataclass(frozen=True)
class AuditEvent:
    """One recorded action. Everything the audit log and broadcasts know comes from here."""

    message: str
    recorded_at: datetime
    performer: str
    destination: str | None = None
    role: str | None = None
    hosts: tuple[str, ...] = ()  # where it happened; empty means every host in play
    #: Extra facts (``version``, ``runtime``...). ``broadcast: "true"`` asks broadcast
    #: plugins to send the event on (deploy and rollback results, ``shipyard broadcast``).
    details: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """Kamal's audit-line format: ``[time] [performer] [dest]? [role]? message``."""
        tags = [self.recorded_at.strftime("%Y-%m-%dT%H:%M:%SZ"), self.performer]
        tags += [tag for tag in (self.destination, self.role) if tag]
        return " ".join(f"[{tag}]" for tag in tags) + f" {self.message}"


@dataclass(frozen=True)
class BuildResult:
    """An image built on the deployer: the tags it carries and its id."""

    image_id: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class PushResult:
    """Image references now available in the registry."""

    references: tuple[str, ...]


@dataclass(frozen=True)
class BootResult:
    """A container booted for one role on one host."""

    host: str
    role: str
    container: str  # container name
    container_id: str
    replaced: str | None = None  # the container that served before, if any


@dataclass(frozen=True)
class PruneResult:
    """What pruning removed on one host."""

    host: str
    removed_containers: tuple[str, ...] = ()
    removed_images: tuple[str, ...] = ()
