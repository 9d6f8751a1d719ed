"""The state file: kamal-proxy's JSON format, written atomically after every change."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .router import Router


class StateStore:
    def __init__(self, path: str) -> None:
        self.path = path

    def save(self, router: Router) -> None:
        """Write to a temp file in the same directory, fsync, then rename over the old file."""
        services = [router.services[name].to_json() for name in sorted(router.services)]
        data = json.dumps(services) + "\n"
        directory = os.path.dirname(self.path) or "."
        fd, temp_path = tempfile.mkstemp(prefix=".kamal-proxy.state.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_path, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_path)
            raise

    def load(self) -> list[Any] | None:
        """The saved services, or None if there is no file.  Raises ValueError if unreadable."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None
        if not text.strip():
            return []
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("state must be a JSON array of services")
        return data
