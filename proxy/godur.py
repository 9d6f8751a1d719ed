"""Go ``time.Duration`` parsing and formatting.

kamal-proxy takes every duration flag through Go's ``time.ParseDuration`` and prints
durations in error messages with ``Duration.String()``.  Kamal sends ``--deploy-timeout="30s"``
and tests read the messages, so both directions are reproduced exactly here.  Durations are
kept as integer nanoseconds everywhere (that is also what the state file stores).
"""

from __future__ import annotations

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # U+00B5 micro sign
    "\u03bcs": MICROSECOND,  # U+03BC Greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}

_MAX_INT64 = (1 << 63) - 1


class DurationError(ValueError):
    """Raised with Go's exact error text, e.g. ``time: missing unit in duration "30"``."""


def go_quote(text: str) -> str:
    """A close-enough ``strconv.Quote``: double quotes with backslash escapes."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_duration(text: str) -> int:
    """Parse like Go's ``time.ParseDuration``; returns nanoseconds."""
    original = text
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise DurationError(f"time: invalid duration {go_quote(original)}")
    total = 0.0
    exact_total = 0
    while s:
        # The number: digits, optionally a fraction.
        i = 0
        while i < len(s) and s[i].isdigit() and s[i].isascii():
            i += 1
        int_part = s[:i]
        s = s[i:]
        frac_part = ""
        if s.startswith("."):
            s = s[1:]
            j = 0
            while j < len(s) and s[j].isdigit() and s[j].isascii():
                j += 1
            frac_part = s[:j]
            s = s[j:]
            if int_part == "" and frac_part == "":
                raise DurationError(f"time: invalid duration {go_quote(original)}")
        elif int_part == "":
            raise DurationError(f"time: invalid duration {go_quote(original)}")
        # The unit: everything up to the next digit or dot.
        k = 0
        while k < len(s) and s[k] != "." and not (s[k].isdigit() and s[k].isascii()):
            k += 1
        unit = s[:k]
        s = s[k:]
        if unit == "":
            raise DurationError(f"time: missing unit in duration {go_quote(original)}")
        if unit not in _UNITS:
            raise DurationError(
                f"time: unknown unit {go_quote(unit)} in duration {go_quote(original)}"
            )
        scale = _UNITS[unit]
        whole = int(int_part or "0") * scale
        frac = 0
        if frac_part:
            frac = int(int(frac_part) * scale / (10 ** len(frac_part)))
        exact_total += whole + frac
        total += whole + frac
        if exact_total > _MAX_INT64:
            raise DurationError(f"time: invalid duration {go_quote(original)}")
    return -exact_total if negative else exact_total


def _format_fraction(value: int, precision: int) -> tuple[str, int]:
    """Go's fmtFrac: the fractional digits of value / 10**precision, trailing zeros dropped."""
    digits = []
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    text = ("." + "".join(reversed(digits))) if printed else ""
    return text, value


def format_duration(ns: int) -> str:
    """Format like Go's ``Duration.String()``: ``30s``, ``500ms``, ``1m0s``, ``1h30m0s``."""
    if ns == 0:
        return "0s"
    negative = ns < 0
    u = -ns if negative else ns
    sign = "-" if negative else ""
    if u < SECOND:
        if u < MICROSECOND:
            return f"{sign}{u}ns"
        if u < MILLISECOND:
            frac, whole = _format_fraction(u, 3)
            return f"{sign}{whole}{frac}\u00b5s"
        frac, whole = _format_fraction(u, 6)
        return f"{sign}{whole}{frac}ms"
    frac, whole_seconds = _format_fraction(u, 9)
    seconds = whole_seconds % 60
    minutes_total = whole_seconds // 60
    text = f"{seconds}{frac}s"
    if minutes_total > 0:
        minutes = minutes_total % 60
        hours = minutes_total // 60
        text = f"{minutes}m{text}"
        if hours > 0:
            text = f"{hours}h{text}"
    return sign + text


def to_seconds(ns: int) -> float:
    return ns / SECOND
