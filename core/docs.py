"""``shipyard docs [SECTION]``, generated from the config schema and the hookspecs, so
the reference cannot drift from what is validated and called."""

from __future__ import annotations

import inspect
import textwrap
import types
import typing
from typing import Any

from shipyard.core.errors import ShipyardError

HOOKS_SECTION = "hooks"


def sections() -> list[str]:
    from shipyard.core.config.schema import DOC_SECTIONS

    return [*DOC_SECTIONS, HOOKS_SECTION]


def render_docs(section: str | None) -> str:
    from shipyard.core.config.schema import DOC_SECTIONS

    if section is None:
        lines = ["Sections (shipyard docs SECTION):", ""]
        for name in sections():
            title = DOC_SECTIONS[name][1] if name in DOC_SECTIONS else "plugin hooks, in lifecycle order"
            lines.append(f"  {name:<14} {title}")
        return "\n".join(lines)
    if section == HOOKS_SECTION:
        return render_hooks()
    if section not in DOC_SECTIONS:
        raise ShipyardError(f"no docs section '{section}' (choose one of: {', '.join(sections())})")
    model, title = DOC_SECTIONS[section]
    return render_model(model, title)


def render_model(model: Any, title: str) -> str:
    from pydantic_core import PydanticUndefined

    lines = [title, "=" * len(title), ""]
    lines += textwrap.wrap(inspect.cleandoc(model.__doc__ or ""), 88)
    lines.append("")
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation)
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "default: " + _show_default(field.default_factory())
        elif field.default is not PydanticUndefined:
            default = "default: " + _show_default(field.default)
        else:
            default = ""
        lines.append(f"{name}  ({kind}{'; ' + default if default else ''})")
        for wrapped in textwrap.wrap(field.description or "", 84):
            lines.append(f"    {wrapped}")
    return "\n".join(lines).rstrip()


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "model_dump"):
        return "(see its section)"
    if value in ({}, []):
        return "empty"
    return repr(value) if isinstance(value, str) else str(value)


def type_name(annotation: Any) -> str:
    """A reader's name for a schema type: ``list of string``, ``bool or mapping``..."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(names))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if isinstance(annotation, type):
        if hasattr(annotation, "model_fields"):
            return "mapping"
        return {"str": "string", "int": "integer", "float": "number", "bool": "bool"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def render_hooks() -> str:
    from shipyard.core import hookspecs

    lines = ["Plugin hooks", "============", ""]
    lines += inspect.cleandoc(hookspecs.__doc__ or "").splitlines()
    for name, spec in hookspecs._all_specs().items():
        signature = ", ".join(inspect.signature(spec).parameters)
        kind = "step (firstresult)" if spec.shipyard_spec.get("firstresult") else "event"
        lines += ["", f"{name}({signature})  [{kind}]"]
        lines += [f"    {line}" for line in inspect.cleandoc(spec.__doc__ or "").splitlines()]
    return "\n".join(lines)
