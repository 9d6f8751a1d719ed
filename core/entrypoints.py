"""Find installed plugins (entry-point group ``shipyard``) without importlib.metadata.

``importlib.metadata`` costs more start-up time than the rest of ``shipyard --help``
together (it imports email, zipfile, csv...). Installed distributions are directories
named ``<name>-<version>.dist-info`` (or ``.egg-info``) on ``sys.path`` with an
``entry_points.txt`` in INI syntax, which is quick to read directly.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENTRYPOINT_GROUP = "shipyard"
PROJECT_HOOKS_FILE = ".shipyard/hooks.py"  # relative to the project directory


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # "package.module:attribute" or "package.module"
    distribution: str
    version: str

    def load(self) -> Any:
        module_name, _, attribute = self.value.partition(":")
        module = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            module = getattr(module, part)
        return module


def _distributions() -> Iterator[tuple[str, str, str, str]]:
    """``(directory, metadata dir name, distribution, version)`` for every installed
    distribution on ``sys.path``, in path order."""
    for directory in sys.path or []:
        try:
            names = [e.name for e in os.scandir(directory or ".") if e.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
        for meta in sorted(names):
            dist, _, version = meta.rsplit(".", 1)[0].partition("-")
            yield directory or ".", meta, dist, version.partition("-")[0]


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``importlib.metadata.version``
    without importing importlib.metadata), or None."""
    wanted = name.lower().replace("-", "_")
    for _, _, dist, version in _distributions():
        if dist.lower().replace("-", "_") == wanted and version:
            return version
    return None


def entry_points(group: str) -> list[EntryPoint]:
    """Entry points of ``group``; the first distribution on ``sys.path`` wins a name."""
    found: dict[str, EntryPoint] = {}
    for directory, meta, dist, version in _distributions():
        try:
            with open(os.path.join(directory, meta, "entry_points.txt"), encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        for name, value in _section(text, group):
            found.setdefault(name, EntryPoint(name, value, dist, version))
    return list(found.values())


def _section(text: str, group: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        if current == group and "=" in line:
            name, _, value = line.partition("=")
            entries.append((name.strip(), value.split("[", 1)[0].strip()))
    return entries
