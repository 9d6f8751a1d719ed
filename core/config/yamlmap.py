"""YAML parsing that remembers the line of every key, so errors can point at it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

KeyPath = tuple[str | int, ...]


def _loader() -> type[yaml.SafeLoader]:
    import yaml

    # The C loader is several times faster on big files; fall back when absent.
    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return loader


def load_with_lines(text: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse ``text`` and return (data, {key path: 1-based line}).

    Anchors, aliases and ``<<`` merge keys work as in Kamal (which uses ``unsafe_load``
    only for those). Raises ``yaml.YAMLError`` with a position on bad syntax.
    """
    import yaml

    _Loader = _loader()
    node = yaml.compose(text, Loader=_Loader)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    data = yaml.load(text, Loader=_Loader)
    return data, lines


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # Keys merged in from an anchor: point at the anchor's lines.
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in merged:
                    _walk(source, path, lines)
                continue
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def format_path(path: KeyPath) -> str:
    """``("servers", "web", "hosts", 1)`` → ``servers.web.hosts[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def deep_merge(base: Any, override: Any) -> Any:
    """Destination files are deep-merged over the base file: maps merge key by key,
    anything else (lists included) is replaced, as in Kamal."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override
