"""The built-in SSH transport (paramiko): how shipyard reaches every host but ``localhost``.

One SSH connection per host for the whole run, shared by every command through
multiplexed channels (thread-safe), with a 30 s keepalive as in Kamal. Honours the
``ssh:`` section of deploy.yml (user, port, keys, key_data, keys_only, proxy,
proxy_command, config, log_level, forward_agent) and ssh_config files; explicit
deploy.yml values win over ssh_config. Host keys are always checked against
``~/.ssh/known_hosts``, ssh_config's ``UserKnownHostsFile`` and
``$SHIPYARD_SSH_KNOWN_HOSTS``: an unknown or changed key refuses the host.

This module stays light (``shipyard --help`` loads every plugin): paramiko is imported
only when the first connection is opened, by :mod:`shipyard.plugins._ssh_transport`.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

from shipyard.core import hookimpl

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport


class ConnectionStats:
    """Counts SSH connections opened by this process (jump hosts included), so tests
    and ``--trace`` users can check that connections are reused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.opened = 0
        self.by_host: Counter[str] = Counter()

    def record(self, address: str) -> None:
        with self._lock:
            self.opened += 1
            self.by_host[address] += 1

    def snapshot(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            return self.opened, dict(self.by_host)


#: Every SSH connection this process opened: ``STATS.opened``, ``STATS.by_host[hostname]``.
STATS = ConnectionStats()


def connections_opened() -> int:
    """How many SSH connections this process has opened so far."""
    return STATS.opened


@hookimpl(trylast=True)
def shipyard_transport(ctx: Context, host: str) -> Transport | None:
    """Connect to ``host`` over SSH (the default for every host). Raises a
    :class:`~shipyard.core.errors.HostError` subclass naming the host when it cannot be
    reached, refuses our keys or shows an unknown host key."""
    from shipyard.plugins._ssh_transport import connect

    return connect(ctx, host)
