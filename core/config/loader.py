"""Load ``config/deploy.yml``: render (jinja2), parse (YAML), merge the destination file,
validate (pydantic plus Kamal's cross-field rules), and report every problem at once.

Each problem is one line, ``<file>:<line>: <key.path>: <what is wrong>``, and all of
them are raised together as one :class:`~shipyard.core.errors.ConfigError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from shipyard.core.config.yamlmap import KeyPath, deep_merge, format_path, load_with_lines
from shipyard.core.errors import ConfigError

DEFAULT_CONFIG_FILE = "config/deploy.yml"
_ERB = re.compile(r"<%")
_JINJA = re.compile(r"{{|{%|{#")
# Internal union tags (see schema.Discriminator) that pydantic puts into error paths.
_UNION_TAGS = {"list", "map", "bool", "scalar"}


class _Source:
    """One YAML file: its display name, data and key → line map."""

    def __init__(self, path: Path, display: str, data: Any, lines: dict[KeyPath, int]) -> None:
        self.path = path
        self.display = display
        self.data = data
        self.lines = lines

    def line_for(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor this file mentions."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def mentions(self, path: KeyPath) -> bool:
        return path in self.lines


def state_dir_for(project_dir: Path) -> Path:
    """``.shipyard``, or ``.kamal`` for a Kamal project that has not been converted."""
    ours = project_dir / ".shipyard"
    kamal = project_dir / ".kamal"
    return kamal if not ours.exists() and kamal.exists() else ours


def load_config(
    project_dir: Path,
    *,
    config_file: str | None = None,
    destination: str | None = None,
    known_commands: frozenset[str] | None = None,
) -> Any:
    """Return the validated :class:`~shipyard.core.config.model.Config`."""
    from shipyard.core.cli.tree import COMMAND_NAMES
    from shipyard.core.config.model import Config

    known_commands = COMMAND_NAMES if known_commands is None else known_commands

    base_path = project_dir / (config_file or DEFAULT_CONFIG_FILE)
    sources = [_read(base_path, project_dir, destination, required=True)]
    if destination:
        dest_path = base_path.with_name(f"{base_path.stem}.{destination}{base_path.suffix}")
        sources.append(_read(dest_path, project_dir, destination, required=True))
    data: Any = {}
    for source in sources:
        if not isinstance(source.data, dict):
            raise ConfigError([f"{source.display}:1: (top level): expected a mapping of keys such as `service:`"])
        data = deep_merge(data, source.data)
    extensions = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith("x-")}
    data = {k: v for k, v in data.items() if k not in extensions}
    schema = _validate(data, sources)
    _check_rules(schema, data, sources, destination, known_commands)
    return Config(
        schema,
        data=data,
        project_dir=project_dir,
        files=[s.path for s in sources],
        destination=destination,
        state_dir=state_dir_for(project_dir),
        extensions=extensions,
    )


def _display(path: Path, project_dir: Path) -> str:
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)


def _read(path: Path, project_dir: Path, destination: str | None, *, required: bool) -> _Source:
    display = _display(path, project_dir)
    if not path.is_file():
        hint = "run `shipyard init`, or pass -c PATH" if path.name == "deploy.yml" else "create it, or check -d/-c"
        raise ConfigError([f"{display}: file not found ({hint})"])
    text = path.read_text()
    erb = _ERB.search(text)
    if erb:
        line = text.count("\n", 0, erb.start()) + 1
        raise ConfigError(
            [f"{display}:{line}: ERB tags (<% %>) are not supported; use jinja2 instead, e.g. {{{{ env.WEB_HOST }}}}"]
        )
    if _JINJA.search(text):
        text = _render(text, display, destination)
    import yaml

    try:
        data, lines = load_with_lines(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError([f"{display}{where}: invalid YAML: {problem}"]) from None
    return _Source(path, display, data if data is not None else {}, lines)


def _render(text: str, display: str, destination: str | None) -> str:
    import traceback

    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        template = environment.from_string(text)
        return template.render(env=dict(os.environ), destination=destination)
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError([f"{display}:{error.lineno}: template error: {error.message}"]) from None
    except jinja2.UndefinedError as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"]
        line = f":{frames[-1].lineno}" if frames else ""
        name = re.search(r"attribute '([^']+)'", str(error))
        what = f"environment variable {name.group(1)} is not set" if name else str(error)
        raise ConfigError(
            [f"{display}{line}: template error: {what} (set it, or use `| default(...)` in the template)"]
        ) from None


def _locate(path: KeyPath, sources: list[_Source]) -> str:
    """``file:line`` for a key path: the last file that mentions it, else the base file."""
    for source in reversed(sources):
        if source.mentions(path):
            return f"{source.display}:{source.lines[path]}"
    for source in reversed(sources):
        line = source.line_for(path)
        if line is not None and len(sources) == 1:
            return f"{source.display}:{line}"
    base = sources[0]
    line = base.line_for(path)
    return f"{base.display}:{line}" if line is not None else base.display


def _validate(data: dict[str, Any], sources: list[_Source]) -> Any:
    from pydantic import ValidationError

    from shipyard.core.config.schema import DeployConfig

    try:
        return DeployConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            path = tuple(p for p in item["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
            problems.append(f"{_locate(path, sources)}: {format_path(path)}: {_describe(item)}")
        raise ConfigError(dict.fromkeys(problems)) from None


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "float_type": "a number",
    "float_parsing": "a number",
}


def _describe(item: Any) -> str:
    kind = item["type"]
    value = item.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; `shipyard docs` lists the keys)"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {_show(value)}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return f"expected a list or a mapping, got {_show(value)}"
    if kind == "literal_error":
        return f"expected {item['ctx']['expected']}, got {_show(value)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = next(iter(item["ctx"].values()))
        relation = {"greater_than_equal": "at least", "less_than_equal": "at most"}.get(kind, kind)
        return f"must be {relation} {bound}, got {_show(value)}"
    if kind == "value_error":
        return str(item["ctx"]["error"])
    return str(item["msg"])


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_rules(
    schema: Any, data: dict[str, Any], sources: list[_Source], destination: str | None, known_commands: frozenset[str]
) -> None:
    """Kamal's cross-field rules, which pydantic models cannot see one key at a time."""
    from shipyard.core.config.rules import cross_field_problems

    problems = [
        f"{_locate(path, sources)}: {format_path(path)}: {message}"
        for path, message in cross_field_problems(schema, destination, known_commands)
    ]
    if problems:
        raise ConfigError(dict.fromkeys(problems))
