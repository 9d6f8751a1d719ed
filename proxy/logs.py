"""JSON-lines logging on stdout, in the shape of Go's slog JSON handler.

Request lines are the hot path (one per proxied request, and access logs stay on in the
benchmark), so they are formatted by the exchange itself with pre-escaped pieces (the
JSON escapes of repeated values — hosts, paths, user agents, content types — come from
bounded caches here) and appended to ``JsonLogger.pending``; the server's 50 ms sweep
writes the batch with one ``os.write``.  Lifecycle events are rare and flushed at once so
that tests and operators see them immediately.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_escape = json.encoder.encode_basestring  # the C-accelerated JSON string escaper

# Escape caches: values up to this length are escaped once and reused; the caches are
# emptied when they reach their size (clients control these values).
_CACHE_VALUE_LIMIT = 256
_CACHE_ENTRIES = 4096
ESCAPED_BYTES: dict[bytes, str] = {}
ESCAPED_TEXT: dict[str, str] = {}

LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def escape(value: str) -> str:
    """A JSON string literal (quotes included)."""
    result: str = _escape(value)
    return result


def escape_bytes(value: bytes) -> str:
    """A header value (latin-1) as a JSON string literal, cached when short."""
    cached = ESCAPED_BYTES.get(value)
    if cached is None:
        cached = _escape(value.decode("latin-1"))
        if len(value) <= _CACHE_VALUE_LIMIT:
            if len(ESCAPED_BYTES) >= _CACHE_ENTRIES:
                ESCAPED_BYTES.clear()
            ESCAPED_BYTES[value] = cached
    return cached


def escape_text(value: str) -> str:
    """Like ``escape`` for strings that repeat (paths, methods), cached when short."""
    cached = ESCAPED_TEXT.get(value)
    if cached is None:
        cached = _escape(value)
        if len(value) <= _CACHE_VALUE_LIMIT:
            if len(ESCAPED_TEXT) >= _CACHE_ENTRIES:
                ESCAPED_TEXT.clear()
            ESCAPED_TEXT[value] = cached
    return cached


class Clock:
    """RFC 3339 timestamps with nanoseconds; the seconds part is formatted once per second.

    Request logging reads ``second_text``/``prefix`` directly and calls ``advance`` when
    the second changes.
    """

    __slots__ = ("prefix", "second", "second_text")

    def __init__(self) -> None:
        self.second = -1
        self.second_text = ""
        self.prefix = ""

    def advance(self, second: int) -> None:
        self.second = second
        self.second_text = str(second)
        self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))

    def format(self, ns: int) -> str:
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self.second:
            self.advance(second)
        return f"{self.prefix}.{fraction:09d}Z"

    def now(self) -> str:
        return self.format(time.time_ns())


CLOCK = Clock()


class JsonLogger:
    def __init__(self, fd: int = 1, debug: bool = False) -> None:
        self._fd = fd
        self._min_level = LEVELS["DEBUG"] if debug else LEVELS["INFO"]
        # Formatted lines waiting for the next flush (request lines are appended directly).
        self.pending: list[str] = []
        self.clock = CLOCK

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
        self.pending.append("".join(parts))
        self.flush()

    def debug(self, msg: str, **fields: Any) -> None:
        self.event("DEBUG", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.event("INFO", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.event("WARN", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.event("ERROR", msg, **fields)

    def flush(self) -> None:
        """Write every pending line (the server's sweep calls this every 50 ms, and a finished
        request when LOG_BATCH lines are waiting)."""
        pending = self.pending
        if not pending:
            return
        data = "".join(pending).encode("utf-8", "replace")
        pending.clear()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                continue
            except OSError:
                return
            view = view[written:]
