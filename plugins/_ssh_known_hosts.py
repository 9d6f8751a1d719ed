"""known_hosts files, read the way OpenSSH reads them (pure Python, no paramiko).

Supports plain and hashed (``|1|salt|hash``) host names, ``[host]:port`` entries,
wildcard patterns (``*``, ``?``) with negation (``!pattern``), ``@revoked`` markers, and
several files at once. ``@cert-authority`` lines are skipped: shipyard does not verify
host certificates, so such hosts must also be listed by key.

The verdict follows OpenSSH: a host is accepted when any entry for it holds the key the
server presented; it has CHANGED when entries for it exist but none holds that key; it is
not known when there is no entry at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Verdict(Enum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Entry:
    patterns: tuple[str, ...]  # host patterns, or one hashed name
    key_type: str  # e.g. ssh-ed25519
    key_base64: str
    marker: str | None = None  # "@revoked" | "@cert-authority" | None
    source: str = ""  # file:line, for messages

    def matches(self, name: str) -> bool:
        return any_pattern_matches(self.patterns, name)


def host_key_name(hostname: str, port: int) -> str:
    """The name a host's key is filed under: ``host``, or ``[host]:port`` off port 22."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _hashed_matches(hashed: str, name: str) -> bool:
    # |1|base64(salt)|base64(HMAC-SHA1(salt, name))
    parts = hashed.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        expected = base64.b64decode(parts[3])
    except (binascii.Error, ValueError):
        return False
    actual = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


def _glob(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns: only ``*`` and ``?`` are special (``[`` is literal, as in
    ``[host]:port``)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts), re.DOTALL)


def any_pattern_matches(patterns: Iterable[str], name: str) -> bool:
    """OpenSSH host pattern list semantics: a negated match wins over everything."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("|"):
            if _hashed_matches(pattern, name):
                matched = True
            continue
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if _glob(body).fullmatch(name.lower()):
            if negated:
                return False
            matched = True
    return matched


def parse_line(line: str, source: str = "") -> Entry | None:
    """One known_hosts line, or None for comments, blanks and lines we cannot read."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split()
    marker = None
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
    if len(fields) < 3:
        return None
    names, key_type, key_base64 = fields[0], fields[1], fields[2]
    try:
        base64.b64decode(key_base64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Entry(tuple(names.split(",")), key_type, key_base64, marker, source)


class KnownHosts:
    """Every entry of one or more known_hosts files."""

    def __init__(self, entries: Iterable[Entry] = (), files: Iterable[str] = ()) -> None:
        self.entries = list(entries)
        self.files = list(files)

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> KnownHosts:
        """Read the files that exist; missing or unreadable ones are skipped."""
        entries: list[Entry] = []
        read: list[str] = []
        for raw in paths:
            path = Path(raw).expanduser()
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            read.append(str(path))
            for number, line in enumerate(text.splitlines(), 1):
                entry = parse_line(line, f"{path}:{number}")
                if entry is not None:
                    entries.append(entry)
        return cls(entries, read)

    def for_names(self, names: Iterable[str]) -> list[Entry]:
        """Entries for any of ``names`` (except @cert-authority lines)."""
        wanted = list(dict.fromkeys(names))
        return [
            e for e in self.entries
            if e.marker != "@cert-authority" and any(e.matches(n) for n in wanted)
        ]

    def key_types_for(self, names: Iterable[str]) -> list[str]:
        """Key types we hold for the host, in the order listed (a hint for the host-key
        algorithm negotiation, so the server shows us a key we can check)."""
        types = [e.key_type for e in self.for_names(names) if e.marker is None]
        return list(dict.fromkeys(types))

    def verdict(self, names: Iterable[str], key_type: str, key_base64: str) -> Verdict:
        entries = self.for_names(names)
        if any(e.marker == "@revoked" and e.key_base64 == key_base64 for e in entries):
            return Verdict.REVOKED
        plain = [e for e in entries if e.marker is None]
        if any(e.key_type == key_type and e.key_base64 == key_base64 for e in plain):
            return Verdict.KNOWN
        return Verdict.CHANGED if plain else Verdict.UNKNOWN


def key_fingerprint(key_base64: str) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(base64.b64decode(key_base64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
