"""Settings of plugins, kept under ``x-shipyard.<name>`` in ``config/deploy.yml``.

Top-level ``x-`` keys are ignored by Kamal and by our schema, so plugins keep their own
settings there. :func:`load_plugin_settings` validates one block against a plugin's own
settings class and reports problems exactly like the core's config errors: every problem
at once, one line each, ``<file>:<line>: x-shipyard.<name>.<key>: <what is wrong>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shipyard.core.config.yamlmap import KeyPath
from shipyard.core.errors import ConfigError, ShipyardError

if TYPE_CHECKING:
    from shipyard.core.config.model import Config

Problem = tuple[KeyPath, str]


class Settings(Protocol):
    def problems(self) -> Iterable[Problem]: ...


S = TypeVar("S", bound=Settings)


def load_plugin_settings(config: Config, name: str, kind: type[S]) -> S | None:
    """``x-shipyard.<name>`` validated as ``kind`` (a dataclass with a ``problems()``
    method for checks pydantic cannot express), or None when the block is absent.

    A block that is present but empty (``ci_check:``) counts as configured: the user
    meant to switch the plugin on. Every problem is reported at once, one line each,
    ``<file>:<line>: x-shipyard.<name>.<key>: <what is wrong>``, as a ConfigError.
    """
    block = config.extensions.get("x-shipyard")
    if not isinstance(block, dict) or name not in block:
        return None
    raw = {} if block[name] is None else block[name]
    if not isinstance(raw, dict):
        problems: list[Problem] = [((), f"expected a mapping (key: value), got {show(raw)}")]
    else:
        from pydantic import ValidationError

        try:
            settings: S = _adapter(kind).validate_python(raw)
        except ValidationError as error:
            problems = _pydantic_problems(error, kind, raw)
        else:
            problems = list(settings.problems())
            if not problems:
                return settings
    raise ConfigError(_problem_lines(config, ("x-shipyard", name), problems))


@cache
def _adapter(kind: type[S]) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def _pydantic_problems(error: Any, kind: type[Any], raw: Mapping[str, Any]) -> list[Problem]:
    from shipyard.core.config.loader import _describe

    keys = [f.name for f in fields(kind)]
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc: KeyPath = tuple(item["loc"])
        head = loc[0] if loc else None
        if item["type"] == "unexpected_keyword_argument":
            problems.append((loc, f"unknown key (the keys are: {', '.join(keys)})"))
        elif isinstance(head, str) and _is_union(kind, head):
            # pydantic reports one error per union member; one line says it better.
            problems.append(((head,), f"expected a string or a list of strings, got {show(raw.get(head))}"))
        else:
            problems.append((loc, _describe(item)))
    return list(dict.fromkeys(problems))


def _is_union(kind: type[Any], name: str) -> bool:
    """Is ``name`` declared ``str | list[str]``? (Annotations are strings here, as the
    module uses postponed evaluation.)"""
    annotation = str(next((f.type for f in fields(kind) if f.name == name), ""))
    return "str |" in annotation and "list[str]" in annotation


def _problem_lines(config: Config, base: KeyPath, problems: list[Problem]) -> list[str]:
    from shipyard.core.config.loader import _locate, _read
    from shipyard.core.config.yamlmap import format_path

    try:
        # Re-read only on this error path, to point at the line like the core's errors.
        sources = [_read(path, config.project_dir, config.destination, required=True) for path in config.files]
    except ShipyardError:  # the file changed since it was loaded: name it without a line
        sources = []
    lines = []
    for path, message in problems:
        full = (*base, *path)
        where = _locate(full, sources) if sources else _display(config)
        lines.append(f"{where}: {format_path(full)}: {message}")
    return lines


def _display(config: Config) -> str:
    path = config.files[0]
    try:
        return str(path.relative_to(config.project_dir))
    except ValueError:
        return str(path)


def positive(value: float, key: str) -> Iterator[Problem]:
    """A problem unless ``value`` (seconds) is more than 0."""
    if value <= 0:
        yield (key,), f"must be more than 0 (seconds), got {value:g}"


def show(value: Any) -> str:
    """A config value as the core's config errors show it (``'abc'``, ``a list``...)."""
    from shipyard.core.config.loader import _show

    text: str = _show(value)
    return text
