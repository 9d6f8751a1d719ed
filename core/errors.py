"""The errors shipyard shows to people.

Every error a user can cause or meet is a :class:`ShipyardError`: the CLI prints its
message (one line per problem, no traceback) and exits with its ``exit_code``. Anything
else that escapes is a bug and is shown with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class ShipyardError(Exception):
    """A problem explained in words; the CLI prints ``Error: <message>`` and exits 1."""

    exit_code = 1

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints, each prefixed with ``Error: ``."""
        return [f"Error: {line}" for line in str(self).splitlines() or [""]]


class UsageError(ShipyardError):
    """A bad flag or argument combination on the command line."""

    exit_code = 2


class NotImplementedYet(ShipyardError):
    """A command whose capability has not landed yet. Never a fake success."""

    exit_code = 2

    def __init__(self, command: str) -> None:
        super().__init__(f"not implemented yet: {command}")

    def lines(self) -> list[str]:
        return [str(self)]


class ExitStatus(ShipyardError):
    """End the command with this exit status and no message (``server exec -i`` passes
    on the remote command's status)."""

    def __init__(self, exit_code: int) -> None:
        super().__init__("")
        self.exit_code = exit_code

    def lines(self) -> list[str]:
        return []


class ConfigError(ShipyardError):
    """One or more problems in the deploy configuration, reported all at once.

    Each problem is one line: ``<file>:<line>: <key.path>: <what was expected>``.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class SecretNotFound(ShipyardError):
    """A secret was referenced but is in none of the secrets files."""


class PluginError(ShipyardError):
    """A plugin could not be loaded, or misbehaved; the message names the plugin."""


class HookAbort(ShipyardError):
    """Raised by a hook implementation to stop the command before anything changes.

    ``pre_*`` hooks (``shipyard_pre_deploy`` above all) raise this, or return a
    :class:`~shipyard.core.hookspecs.Veto`, to abort. The core adds the hook and plugin
    names to the message.
    """


class HookFailed(ShipyardError):
    """A shell hook exited non-zero. The message names the hook and shows its output."""


class LockHeld(ShipyardError):
    """The deploy lock is held by someone else."""


class HostError(ShipyardError):
    """Something failed on one host. The message is one line that starts with the host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.reason = message
        super().__init__(f"[{host}] {message}")


class HostUnreachable(HostError):
    """The host could not be reached at all (refused, timed out, no route, DNS)."""


class HostAuthFailed(HostError):
    """The host answered but refused our credentials."""


class HostKeyRefused(HostError):
    """The host's key is unknown or has changed; we refuse to talk to it."""


class CommandFailed(HostError):
    """A remote command exited non-zero; the message carries the tail of its stderr."""

    def __init__(self, host: str, argv: Iterable[str], exit_status: int, stderr: str) -> None:
        self.argv = list(argv)
        self.exit_status = exit_status
        self.stderr = stderr
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        shown = self.argv[0] if self.argv else "command"
        detail = f": {tail}" if tail else ""
        super().__init__(host, f"`{shown}` exited with {exit_status}{detail}")


class HostsFailed(ShipyardError):
    """A multi-host step failed on some hosts. One line per failed host."""

    def __init__(self, failures: Mapping[str, BaseException]) -> None:
        self.failures = dict(failures)
        lines = []
        for host, error in self.failures.items():
            text = str(error)
            lines.append(text if text.startswith(f"[{host}]") else f"[{host}] {text}")
        super().__init__("\n".join(lines))
