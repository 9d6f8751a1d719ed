"""The one output layer every command and plugin writes through.

* One aligned line per host: ``[10.0.0.11] Booted app abc123``; the prefix is padded to
  the widest host in play so columns line up.
* Levels: ``-q`` shows errors and command results only, ``-v`` adds detail lines.
* ``--json``: one JSON object per line on stdout for every event, for machines.
* Secrets never get out: every registered secret value is replaced by ``[REDACTED]`` in
  everything written, whatever the mode.
* A live progress display on a terminal (rich), and nothing of it otherwise.

Plugins never ``print``; they call ``ctx.output``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, Protocol

REDACTED = "[REDACTED]"

QUIET, NORMAL, VERBOSE = -1, 0, 1


class Progress(Protocol):
    def advance(self, amount: int = 1) -> None: ...


class _NoProgress:
    def advance(self, amount: int = 1) -> None:
        pass


class Output:
    def __init__(
        self,
        *,
        verbosity: int = NORMAL,
        json_mode: bool = False,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
    ) -> None:
        self.verbosity = verbosity
        self.json_mode = json_mode
        self._out = out
        self._err = err
        self._lock = threading.RLock()
        self._secrets: list[str] = []
        self._width = 0

    # -- configuration ------------------------------------------------------------------

    @property
    def out(self) -> IO[str]:
        return self._out or sys.stdout

    @property
    def err(self) -> IO[str]:
        return self._err or sys.stderr

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """Align host prefixes to the widest of ``hosts``."""
        self._width = max((len(h) for h in hosts), default=0)

    def redact(self, values: Iterable[str]) -> None:
        """Never show any of ``values`` again (secrets). Short values are ignored because
        replacing a one-letter secret everywhere would garble every line."""
        with self._lock:
            for value in values:
                for piece in {value, *value.splitlines()}:
                    if len(piece.strip()) >= 3 and piece not in self._secrets:
                        self._secrets.append(piece)
            # Longest first, so a secret containing another is replaced whole.
            self._secrets.sort(key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    # -- writing ------------------------------------------------------------------------

    def info(self, message: str, *, host: str | None = None, **data: Any) -> None:
        """A normal progress line, hidden by ``-q``."""
        self._emit("info", message, host, data, show=self.verbosity >= NORMAL)

    def detail(self, message: str, *, host: str | None = None, **data: Any) -> None:
        """A line only ``-v`` shows (commands being run, hook output)."""
        self._emit("debug", message, host, data, show=self.verbosity >= VERBOSE)

    def warn(self, message: str, *, host: str | None = None, **data: Any) -> None:
        self._emit("warning", message, host, data, show=self.verbosity >= NORMAL, stream="err")

    def error(self, message: str, *, host: str | None = None, **data: Any) -> None:
        """Always shown, on stderr."""
        self._emit("error", message, host, data, show=True, stream="err")

    def result(self, message: str, *, host: str | None = None, **data: Any) -> None:
        """The command's answer (``config``'s YAML, ``server exec``'s output): shown even
        with ``-q``."""
        self._emit("result", message, host, data, show=True)

    def data(self, event: str, payload: Any, text: str) -> None:
        """A structured answer: ``payload`` as JSON in ``--json`` mode, ``text`` otherwise."""
        if self.json_mode:
            self._write_json({"event": event, "data": payload})
        else:
            self._write_text(text, stream="out")

    def _emit(
        self, level: str, message: str, host: str | None, data: dict[str, Any], *, show: bool, stream: str = "out"
    ) -> None:
        if self.json_mode:
            # Machines get every event; the level lets them filter.
            record: dict[str, Any] = {"time": _now(), "level": level, "message": message}
            if host is not None:
                record["host"] = host
            record.update(data)
            self._write_json(record)
            return
        if not show:
            return
        lines = message.splitlines() or [""]
        if host is not None:
            prefix = f"[{host}]".ljust(self._width + 2)
            lines = [f"{prefix} {line}" for line in lines]
        self._write_text("\n".join(lines), stream=stream)

    def _write_json(self, record: dict[str, Any]) -> None:
        line = self.scrub(json.dumps(record, default=str, ensure_ascii=False))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def _write_text(self, text: str, *, stream: str) -> None:
        target = self.err if stream == "err" else self.out
        with self._lock:
            target.write(self.scrub(text) + "\n")
            target.flush()

    # -- progress -----------------------------------------------------------------------

    @contextmanager
    def progress(self, description: str, total: int | None = None, *, enabled: bool = True) -> Iterator[Progress]:
        """A live progress bar on a terminal; silent when piped, quiet or in JSON mode."""
        if not enabled or self.json_mode or self.verbosity < NORMAL or not self.err.isatty():
            yield _NoProgress()
            return
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
        with RichProgress(*columns, console=Console(file=self.err), transient=True) as bar:
            task = bar.add_task(self.scrub(description), total=total)

            class _Advance:
                def advance(self, amount: int = 1) -> None:
                    bar.advance(task, amount)

            yield _Advance()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
