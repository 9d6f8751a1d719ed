"""Secrets: dotenv files read lazily, with ``$(cmd)`` and ``${VAR}`` as in Kamal.

Files, later ones winning: ``<secrets_path>-common``, then ``<secrets_path>`` without a
destination or ``<secrets_path>.<dest>`` with one. They are parsed on first use only, so
commands that need no secret never run the commands a secrets file may contain.

Syntax: ``KEY=value`` lines, optional ``export``, ``#`` comments. Single quotes are
literal. Double quotes and bare values expand ``$VAR``/``${VAR}`` (earlier keys, then the
environment) and run ``$(command)`` locally; ``\\$`` is a literal dollar. Double-quoted
values may span lines (PEM keys).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from shipyard.core.errors import SecretNotFound, ShipyardError

_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*")
_VAR = re.compile(r"\\?\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class SecretsAdapter(Protocol):
    """A password-manager bridge for ``shipyard secrets fetch -a NAME``."""

    def fetch(self, secrets: list[str], account: str | None, from_: str | None) -> dict[str, str]: ...


def secrets_files(secrets_path: Path, destination: str | None) -> list[Path]:
    """The files read, in order, for ``destination``."""
    common = secrets_path.with_name(secrets_path.name + "-common")
    specific = secrets_path.with_name(f"{secrets_path.name}.{destination}") if destination else secrets_path
    return [common, specific]


class Secrets:
    """Read-only mapping of secret names to values, parsed on first access."""

    def __init__(self, files: list[Path], *, on_load: Callable[[list[str]], None] | None = None) -> None:
        self.files = files
        self._values: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._on_load = on_load

    def _load(self) -> dict[str, str]:
        with self._lock:
            if self._values is None:
                values: dict[str, str] = {}
                for path in self.files:
                    if path.is_file():
                        values.update(parse_dotenv(path.read_text(), path=path, known=values))
                self._values = values
                if self._on_load:
                    self._on_load(list(values.values()))
            return self._values

    def __getitem__(self, name: str) -> str:
        values = self._load()
        if name not in values:
            read = ", ".join(str(p) for p in self.files if p.is_file()) or "none exist: " + ", ".join(
                str(p) for p in self.files
            )
            raise SecretNotFound(f"Secret '{name}' not found in {read}")
        return values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def all(self) -> dict[str, str]:
        return dict(self._load())

    @property
    def loaded(self) -> bool:
        return self._values is not None


def parse_dotenv(text: str, *, path: Path | None = None, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse dotenv ``text``. ``known`` holds keys from files read earlier (for ``$VAR``)."""
    where = str(path) if path else "secrets"
    scope: dict[str, str] = dict(known or {})
    result: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        lineno = index + 1
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _KEY.match(line)
        if not match:
            raise ShipyardError(f"{where}:{lineno}: expected KEY=value, got {line.strip()[:40]!r}")
        key, rest = match.group(1), line[match.end():]
        if rest.startswith("'"):
            value, index = _quoted(rest, "'", lines, index, where, lineno)
        elif rest.startswith('"'):
            raw, index = _quoted(rest, '"', lines, index, where, lineno)
            value = _substitute(_unescape(raw), scope, where, lineno)
        else:
            bare = re.split(r"\s+#", rest, maxsplit=1)[0].strip()
            value = _substitute(bare, scope, where, lineno)
        scope[key] = value
        result[key] = value
    return result


def _quoted(rest: str, quote: str, lines: list[str], index: int, where: str, lineno: int) -> tuple[str, int]:
    """Read a quoted value that may continue on following lines; return it and the next
    line index."""
    body = rest[1:]
    collected: list[str] = []
    while True:
        end = _closing(body, quote)
        if end is not None:
            collected.append(body[:end])
            return "\n".join(collected), index
        collected.append(body)
        if index >= len(lines):
            raise ShipyardError(f"{where}:{lineno}: unterminated {quote} quote")
        body = lines[index]
        index += 1


def _closing(text: str, quote: str) -> int | None:
    escaped = False
    for position, char in enumerate(text):
        if quote == '"' and char == "\\" and not escaped:
            escaped = True
            continue
        if char == quote and not escaped:
            return position
        escaped = False
    return None


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"')


def _substitute(value: str, scope: Mapping[str, str], where: str, lineno: int) -> str:
    value = _expand_vars(value, scope)
    return _run_commands(value, where, lineno)


def _expand_vars(value: str, scope: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0).startswith("\\"):
            return match.group(0)[1:]
        name = match.group(1) or match.group(2)
        return scope.get(name, os.environ.get(name, ""))

    return _VAR.sub(replace, value)


def _run_commands(value: str, where: str, lineno: int) -> str:
    out = []
    position = 0
    while True:
        start = value.find("$(", position)
        if start == -1:
            out.append(value[position:])
            return "".join(out)
        if start > 0 and value[start - 1] == "\\":
            out.append(value[position : start - 1] + "$(")
            position = start + 2
            continue
        end = _matching_paren(value, start + 1)
        if end is None:
            raise ShipyardError(f"{where}:{lineno}: unterminated $( in value")
        out.append(value[position:start])
        out.append(_run(value[start + 2 : end], where, lineno))
        position = end + 1


def _matching_paren(value: str, open_at: int) -> int | None:
    depth = 0
    for position in range(open_at, len(value)):
        if value[position] == "(":
            depth += 1
        elif value[position] == ")":
            depth -= 1
            if depth == 0:
                return position
    return None


def _run(command: str, where: str, lineno: int) -> str:
    # The secrets file is the user's own shell-flavoured file (as in Kamal): run with a shell.
    completed = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        first = (completed.stderr.strip().splitlines() or [""])[0]
        raise ShipyardError(
            f"{where}:{lineno}: command in $(...) exited with {completed.returncode}"
            + (f": {first}" if first else "")
        )
    return completed.stdout.rstrip("\n")
