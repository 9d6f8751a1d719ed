"""A small re-implementation of Go's pflag/cobra argument handling.

Kamal drives the proxy with argv it builds itself (``--host="a" --host="b" --tls
--deploy-timeout="30s" --forward-headers="false"``), so the parsing rules matter more than
the help text: repeated and comma-separated list flags, ``--bool``/``--bool=false`` but never
``--bool false``, Go duration and integer syntax, and cobra's error messages.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .godur import DurationError, go_quote, parse_duration

FlagKind = Literal["bool", "int", "string", "strings", "duration"]

FlagValue = bool | int | str | list[str]

_TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class CLIError(Exception):
    """An error that the CLI prints as ``Error: <message>`` and exits 1."""


class HelpRequested(Exception):
    """``-h``/``--help`` was given."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: FlagKind
    default: FlagValue
    usage: str = ""
    required: bool = False


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def parse_go_int(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 0, 64)``, which is what pflag uses for int flags."""
    body = text
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    base = 10
    digits = body
    lowered = body.lower()
    if lowered.startswith("0x"):
        base, digits = 16, body[2:]
    elif lowered.startswith("0b"):
        base, digits = 2, body[2:]
    elif lowered.startswith("0o"):
        base, digits = 8, body[2:]
    elif len(body) > 1 and body.startswith("0"):
        base, digits = 8, body[1:]
    if base != 10:
        digits = digits.replace("_", "")
    if not digits or not all(c.isascii() and c.isalnum() for c in digits):
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    try:
        value = sign * int(digits, base)
    except ValueError:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax") from None
    if value < _INT64_MIN or value > _INT64_MAX:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


def parse_csv_list(text: str) -> list[str]:
    """pflag's ``readAsCSV``: an empty value adds nothing; otherwise one CSV record."""
    if text == "":
        return []
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise ValueError(str(exc)) from None
    return rows[0] if rows else []


def convert(flag: Flag, raw: str) -> FlagValue:
    """Turn one raw argument into the flag's type, with pflag's error wording."""
    try:
        if flag.kind == "bool":
            return parse_go_bool(raw)
        if flag.kind == "int":
            return parse_go_int(raw)
        if flag.kind == "duration":
            return parse_duration(raw)
        if flag.kind == "strings":
            return parse_csv_list(raw)
        return raw
    except (ValueError, DurationError) as exc:
        raise CLIError(
            f"invalid argument {go_quote(raw)} for {go_quote('--' + flag.name)} flag: {exc}"
        ) from None


@dataclass
class ParsedArgs:
    values: dict[str, FlagValue]
    changed: set[str] = field(default_factory=set)
    positionals: list[str] = field(default_factory=list)

    def get_bool(self, name: str) -> bool:
        value = self.values[name]
        assert isinstance(value, bool)
        return value

    def get_int(self, name: str) -> int:
        value = self.values[name]
        assert isinstance(value, int)
        return value

    def get_str(self, name: str) -> str:
        value = self.values[name]
        assert isinstance(value, str)
        return value

    def get_list(self, name: str) -> list[str]:
        value = self.values[name]
        assert isinstance(value, list)
        return list(value)


def parse_flags(
    flags: Sequence[Flag], argv: Sequence[str], defaults: dict[str, FlagValue] | None = None
) -> ParsedArgs:
    """Parse ``argv`` with pflag rules (interspersed positionals, ``--`` ends flags)."""
    by_name = {f.name: f for f in flags}
    values: dict[str, FlagValue] = {}
    for f in flags:
        default = f.default if defaults is None or f.name not in defaults else defaults[f.name]
        values[f.name] = list(default) if isinstance(default, list) else default
    parsed = ParsedArgs(values=values)
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            parsed.positionals.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            parsed.positionals.append(arg)
            continue
        if arg.startswith("--"):
            _parse_long(arg, args, by_name, parsed)
        else:
            _parse_short(arg, parsed)
    return parsed


def _parse_long(arg: str, rest: list[str], by_name: dict[str, Flag], parsed: ParsedArgs) -> None:
    body = arg[2:]
    if body == "" or body.startswith("-") or body.startswith("="):
        raise CLIError(f"bad flag syntax: {arg}")
    name, has_value, inline = body.partition("=")
    if name == "help":
        raise HelpRequested()
    flag = by_name.get(name)
    if flag is None:
        raise CLIError(f"unknown flag: --{name}")
    if has_value:
        raw = inline
    elif flag.kind == "bool":
        raw = "true"
    elif rest:
        raw = rest.pop(0)
    else:
        raise CLIError(f"flag needs an argument: --{name}")
    value = convert(flag, raw)
    if flag.kind == "strings":
        assert isinstance(value, list)
        if name in parsed.changed:
            current = parsed.values[name]
            assert isinstance(current, list)
            parsed.values[name] = current + value
        else:
            parsed.values[name] = value
    else:
        parsed.values[name] = value
    parsed.changed.add(name)


def _parse_short(arg: str, parsed: ParsedArgs) -> None:
    letters = arg[1:]
    for letter in letters:
        if letter == "h":
            raise HelpRequested()
        raise CLIError(f"unknown shorthand flag: {letter!r} in {arg}")
