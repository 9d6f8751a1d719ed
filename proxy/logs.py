"""JSON-lines logging on stdout, in the shape of Go's slog JSON handler.

Request lines are the hot path (one per proxied request, and access logs stay on in the
benchmark), so they are formatted with pre-escaped pieces and written in batches: lines are
collected in memory and flushed on a short timer or when the batch grows.  Lifecycle events
are rare and flushed at once so that tests and operators see them immediately.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

_escape = json.encoder.encode_basestring  # the C-accelerated JSON string escaper

FLUSH_INTERVAL = 0.05
FLUSH_BYTES = 64 * 1024

LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def escape(value: str) -> str:
    """A JSON string literal (quotes included)."""
    result: str = _escape(value)
    return result


class _Clock:
    """RFC 3339 timestamps with nanoseconds; the seconds part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{fraction:09d}Z"


class JsonLogger:
    def __init__(self, fd: int = 1, debug: bool = False) -> None:
        self._fd = fd
        self._min_level = LEVELS["DEBUG"] if debug else LEVELS["INFO"]
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock = _Clock()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self._min_level

    def event(self, level: str, msg: str, **fields: Any) -> None:
        """A lifecycle line: ``{"time":…,"level":…,"msg":…, fields…}``, written at once."""
        if not self.enabled(level):
            return
        parts = [f'{{"time":"{self.clock.now()}","level":"{level}","msg":{escape(msg)}']
        for key, value in fields.items():
            parts.append(f",{escape(key)}:{json.dumps(value, default=str)}")
        parts.append("}\n")
        self._pending.append("".join(parts))
        self.flush()

    def debug(self, msg: str, **fields: Any) -> None:
        self.event("DEBUG", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.event("INFO", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.event("WARN", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.event("ERROR", msg, **fields)

    def write_line(self, line: str) -> None:
        """Queue an already-formatted line (request logs); flushed in batches."""
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES or self._loop is None:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "replace")
        self._pending.clear()
        self._pending_bytes = 0
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                continue
            except OSError:
                return
            view = view[written:]
