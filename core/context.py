"""The one object every hook receives: what this invocation is about.

Expensive facts (the config, the version, the performer, the secrets) are computed on
first use, so a command or plugin that does not need them never pays for them.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.core.output import Output
from shipyard.core.transport import ConnectionPool

if TYPE_CHECKING:
    from shipyard.core.config.model import Config, Role
    from shipyard.core.plugins import Hooks, ShipyardPluginManager
    from shipyard.core.secrets import Secrets


@dataclass(frozen=True)
class GlobalOptions:
    """Kamal's global options, accepted before or after any command name."""

    verbose: bool = False
    quiet: bool = False
    version: str | None = None
    primary: bool = False
    hosts: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    config_file: str | None = None
    destination: str | None = None
    skip_hooks: bool = False
    json: bool = False
    trace: bool = False
    no_plugins: tuple[str, ...] = ()
    lock_wait: bool = False
    lock_wait_timeout: float = 900.0
    lock_wait_interval: float = 15.0


@dataclass(eq=False)
class Context:
    options: GlobalOptions
    output: Output
    plugins: ShipyardPluginManager
    command: str
    subcommand: str | None = None
    project_dir: Path = field(default_factory=Path.cwd)
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: True while this process (or the shipyard that started it) holds the deploy lock.
    lock_held: bool = field(default_factory=lambda: os.environ.get("SHIPYARD_LOCK") == "true")

    def __post_init__(self) -> None:
        self.connections = ConnectionPool(self)
        #: Per-run scratch space for plugins (open tunnels, queued audit lines...), keyed
        #: by the plugin's name.
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:  # short, because --trace prints it for every hook call
        name = " ".join(p for p in (self.command, self.subcommand) if p)
        return f"<Context {name}>"

    @property
    def hooks(self) -> Hooks:
        return self.plugins.hooks

    @cached_property
    def config(self) -> Config:
        """The validated config; raises ConfigError (one line per problem) if invalid."""
        from shipyard.core.config.loader import load_config

        config: Config = load_config(
            self.project_dir, config_file=self.options.config_file, destination=self.options.destination
        )
        return config

    @property
    def destination(self) -> str | None:
        return self.options.destination

    @cached_property
    def secrets(self) -> Secrets:
        from shipyard.core.secrets import Secrets, secrets_files

        files = secrets_files(self.config.secrets_path, self.destination)
        return Secrets(files, on_load=self.output.redact)

    @cached_property
    def version(self) -> str:
        """``--version``, then ``$VERSION``, then the git HEAD sha (with an
        ``_uncommitted_<hash>`` suffix when building a dirty working tree)."""
        if self.options.version:
            return self.options.version
        if os.environ.get("VERSION"):
            return os.environ["VERSION"]
        from shipyard.core.versioning import git_version

        return git_version(self.project_dir, working_tree=self._builds_working_tree())

    def _builds_working_tree(self) -> bool:
        try:
            return self.config.schema.builder.context is not None
        except Exception:
            return False

    @cached_property
    def performer(self) -> str:
        """``git config user.email``, else the login name (Kamal's rule)."""
        try:
            email = subprocess.run(
                ["git", "config", "user.email"], capture_output=True, text=True, check=False, cwd=self.project_dir
            ).stdout.strip()
        except OSError:
            email = ""
        return email or getpass.getuser()

    @cached_property
    def _selection(self) -> tuple[list[Role], list[str]]:
        return self.config.select(hosts=self.options.hosts, roles=self.options.roles, primary=self.options.primary)

    @property
    def roles(self) -> list[Role]:
        """Roles in play after ``-r``/``-h``/``-p``."""
        return self._selection[0]

    @property
    def hosts(self) -> list[str]:
        """Hosts in play after ``-r``/``-h``/``-p``, primary-role hosts first."""
        return self._selection[1]

    @property
    def max_concurrency(self) -> int:
        try:
            return self.config.schema.sshkit.max_concurrent_starts
        except Exception:
            return 30

    def audit(self, message: str, *, hosts: Sequence[str] | None = None, role: str | None = None,
              **details: str) -> None:
        """Record an action: every ``shipyard_audit`` implementation receives it (the
        built-in ``audit`` plugin appends it to the audit log on ``hosts``, default: the
        hosts in play)."""
        from shipyard.core.records import AuditEvent

        event = AuditEvent(
            message=message,
            recorded_at=datetime.now(UTC),
            performer=self.performer,
            destination=self.destination,
            role=role,
            hosts=tuple(hosts if hosts is not None else self.hosts),
            details=dict(details),
        )
        self.hooks.audit(self, event)

    @property
    def service_version(self) -> str:
        """``<service>@<version[:7]>`` (Kamal's ``service_version`` tag)."""
        return f"{self.config.service}@{self.version[:7]}"
