"""The one interface every piece of remote work goes through.

A transport runs commands on one host. Commands are argument lists, never shell strings:
the transport quotes them exactly once (``shlex.join``) where a remote shell is involved.
Transports are provided by plugins through the ``shipyard_transport`` hook (the built-in
``ssh`` plugin over paramiko, ``local`` for ``localhost``), and cached per host for the
whole run by :class:`ConnectionPool`, so one command invocation opens one connection per
host no matter how many commands it runs.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shipyard.core.errors import CommandFailed, PluginError

if TYPE_CHECKING:
    from shipyard.core.context import Context

#: Called with ("stdout" | "stderr", one line without its newline) while a command runs.
OutputSink = Callable[[str, str], None]


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind."""

    host: str
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> CommandResult:
        """Return self, or raise :class:`CommandFailed` naming the host and stderr tail."""
        if not self.ok:
            raise CommandFailed(self.host, self.argv, self.exit_status, self.stderr)
        return self


class PortForward(Protocol):
    """An open port forward; close it when the work that needs it is done."""

    def close(self) -> None: ...


class Transport(abc.ABC):
    """Runs commands on, and moves files to and from, one host.

    Remote paths are relative to the login user's home directory unless absolute.
    Every method raises a :class:`~shipyard.core.errors.HostError` subclass when the host
    cannot be reached or refuses us, so callers report one line per host.
    """

    #: The name of the implementation (``ssh``, ``local``...), shown by ``--trace``.
    kind: str = "transport"

    def __init__(self, host: str) -> None:
        self.host = host

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``argv`` and wait for it. A non-zero exit is data, not an exception:
        call ``.check()`` on the result to turn it into :class:`CommandFailed`.

        ``stdin`` is written to the command's standard input (secrets travel this way,
        never on a command line). ``on_output`` receives each line as it arrives.
        ``timeout`` (seconds) bounds the whole command.
        """

    @abc.abstractmethod
    def upload(self, content: bytes | Path, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``content`` (bytes, or a local file) to ``remote_path`` with ``mode``.

        The file is created with ``mode`` from the start (never world-readable first),
        which is what env files holding secrets (0600) need.
        """

    @abc.abstractmethod
    def download(self, remote_path: str) -> bytes:
        """Return the contents of ``remote_path``."""

    def forward_remote_port(self, remote_port: int, local_host: str, local_port: int) -> PortForward:
        """Open ``remote_port`` on the host's loopback and forward connections back to
        ``local_host:local_port`` on this machine (``ssh -R``). Used by the
        local-registry mode so hosts pull from a registry on the deployer."""
        raise PluginError(f"the {self.kind} transport cannot forward ports")

    def interactive(self, argv: Sequence[str]) -> int:
        """Run ``argv`` attached to this terminal (a tty) and return its exit status."""
        raise PluginError(f"the {self.kind} transport cannot run interactive commands")

    def close(self) -> None:  # noqa: B027 - optional for transports without connections
        """Release the connection. Called once at the end of the run."""

    def check(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        """``run(argv).check()``: run and raise :class:`CommandFailed` on a non-zero exit."""
        return self.run(argv, **kwargs).check()  # type: ignore[arg-type]


@dataclass
class ConnectionPool:
    """One transport per host for the whole run, created on first use.

    The first connection of the run fires the ``pre-connect`` hook (once per process),
    then asks the ``shipyard_transport`` hook for the host's transport.
    """

    ctx: Context
    _transports: dict[str, Transport] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _host_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _pre_connect_lock: threading.RLock = field(default_factory=threading.RLock)
    _pre_connect_done: bool = False

    def pre_connect(self) -> None:
        """Fire the pre-connect hook if this run has not yet (commands that build call this
        before the build, as Kamal does)."""
        # Other threads wait until the hook has finished; the hook's own thread re-enters
        # (an RLock) and finds it done, so a hook that connects somewhere cannot recurse.
        with self._pre_connect_lock:
            if self._pre_connect_done:
                return
            self._pre_connect_done = True
            self.ctx.hooks.pre_connect(self.ctx)

    def get(self, host: str) -> Transport:
        self.pre_connect()
        with self._lock:
            if host in self._transports:
                return self._transports[host]
            host_lock = self._host_locks.setdefault(host, threading.Lock())
        # Connect outside the pool lock so hosts connect in parallel, but only once each.
        with host_lock:
            with self._lock:
                if host in self._transports:
                    return self._transports[host]
            transport = self.ctx.hooks.transport(self.ctx, host)
            with self._lock:
                self._transports[host] = transport
            return transport

    def close_all(self) -> None:
        with self._lock:
            transports = list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            # Closing must never hide the real outcome of the command.
            with contextlib.suppress(Exception):
                transport.close()

    @property
    def open_hosts(self) -> list[str]:
        with self._lock:
            return list(self._transports)
