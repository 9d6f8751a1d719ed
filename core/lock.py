"""The deploy lock: a directory on the primary host, created atomically with ``mkdir``.

``.shipyard/lock-<service>[-<dest>]/`` exists while someone deploys; its ``details`` file
says who, when (UTC ISO 8601), which version and why. ``mkdir`` either creates the
directory or fails because it exists, so two deployers racing for it cannot both win.
A shipyard started by a hook of a locked shipyard inherits the lock (``SHIPYARD_LOCK``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shipyard.core.errors import LockHeld, ShipyardError

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

AUTOMATIC = "Automatic deploy lock"
NO_LOCK = "There is no deploy lock"


def lock_dir(ctx: Context) -> str:
    return f"{ctx.config.run_directory}/lock-{ctx.config.service_and_destination}"


def _primary(ctx: Context) -> Transport:
    return ctx.connections.get(ctx.config.primary_host)


def _details(ctx: Context, message: str) -> str:
    try:
        version = ctx.version
    except ShipyardError:
        version = "(unknown)"
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"Locked by: {ctx.performer} at {when}\nVersion: {version}\nMessage: {message}\n"


def status(ctx: Context) -> str | None:
    """The details of the current lock, or None when there is none."""
    directory = lock_dir(ctx)
    result = _primary(ctx).run(["sh", "-c", 'test -d "$1" || exit 3; cat "$1/details" 2>/dev/null; true', "sh", directory])
    if result.exit_status == 3:
        return None
    result.check()
    return result.stdout.strip() or "Locked (details are being written)"


def try_acquire(ctx: Context, message: str) -> str | None:
    """Take the lock; return None on success, or the holder's details ("" while the holder
    is still writing them or has just let go). One round trip: create the directory
    (atomically) and write the details from stdin, or read the holder's details."""
    directory = lock_dir(ctx)
    # Exit 3 only when the directory already exists; any other mkdir failure shows itself.
    script = (
        'mkdir -p "$1" && { mkdir "$2" 2>/dev/null || { test -d "$2" && { cat "$2/details" 2>/dev/null; exit 3; }; mkdir "$2"; }; }'
        ' && cat > "$2/details"'
    )
    taken = _primary(ctx).run(
        ["sh", "-c", script, "sh", ctx.config.run_directory, directory], stdin=_details(ctx, message).encode()
    )
    if taken.exit_status == 3:
        return taken.stdout.strip()
    taken.check()
    return None


# A lock without details is either being written or has just been released: look again soon.
_TRANSIENT_RETRIES = 20
_TRANSIENT_PAUSE = 0.1


def acquire(ctx: Context, message: str) -> None:
    """Take the lock, waiting with ``--lock-wait`` for an automatic lock to go away."""
    options = ctx.options
    deadline = time.monotonic() + options.lock_wait_timeout
    transient = 0
    while True:
        holder = try_acquire(ctx, message)
        if holder is None:
            ctx.lock_held = True
            return
        if not holder and transient < _TRANSIENT_RETRIES:
            transient += 1
            time.sleep(_TRANSIENT_PAUSE)
            continue
        holder = holder or "Locked (no details)"
        manual = f"Message: {AUTOMATIC}" not in holder
        if not options.lock_wait or manual or time.monotonic() >= deadline:
            why = " (it was taken by hand, so --lock-wait does not wait for it)" if options.lock_wait and manual else ""
            raise LockHeld(f"Deploy lock found{why}. Run 'shipyard lock help' for more information\n{holder}")
        ctx.output.info(f"Waiting for the deploy lock...\n{holder}")
        transient = 0
        time.sleep(options.lock_wait_interval)


def release(ctx: Context) -> None:
    directory = lock_dir(ctx)
    _primary(ctx).check(["rm", "-rf", "--", directory])
    ctx.lock_held = False


@contextmanager
def deploy_lock(ctx: Context, message: str = AUTOMATIC) -> Iterator[None]:
    """Hold the lock for the block; release it however the block ends. A lock inherited
    from a parent shipyard is neither taken nor released here."""
    if ctx.lock_held:
        yield
        return
    acquire(ctx, message)
    try:
        yield
    finally:
        release(ctx)
