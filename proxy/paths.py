"""Where the proxy keeps its socket and its state, resolved exactly as kamal-proxy does.

The CLI and the server resolve these independently (they only share the environment), so
this module must stay free of side effects other than creating the data directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

SOCKET_NAME = "kamal-proxy.sock"
STATE_FILE_NAME = "kamal-proxy.state"
APP_DIR_NAME = "kamal-proxy"


def socket_path(environ: Mapping[str, str] | None = None) -> str:
    """``$KAMAL_PROXY_SOCKET``, ``$SHIPYARD_PROXY_SOCKET``, ``$XDG_RUNTIME_DIR/...``, temp dir."""
    env = os.environ if environ is None else environ
    for key in ("KAMAL_PROXY_SOCKET", "SHIPYARD_PROXY_SOCKET"):
        value = env.get(key, "")
        if value:
            return value
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    if runtime_dir:
        return os.path.join(runtime_dir, SOCKET_NAME)
    return os.path.join(temp_dir(env), SOCKET_NAME)


def temp_dir(environ: Mapping[str, str] | None = None) -> str:
    """Go's ``os.TempDir()``: ``$TMPDIR`` or ``/tmp``."""
    env = os.environ if environ is None else environ
    return env.get("TMPDIR", "") or (tempfile.gettempdir() if os.name != "posix" else "/tmp")


def data_dir(create: bool = True, environ: Mapping[str, str] | None = None) -> str:
    """``$HOME/.config/kamal-proxy`` (mode 0700), falling back to the temp dir."""
    env = os.environ if environ is None else environ
    home = env.get("HOME", "")
    if not home:
        return temp_dir(env)
    path = os.path.join(home, ".config", APP_DIR_NAME)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            return temp_dir(env)
    return path


def state_file_path(directory: str) -> str:
    return os.path.join(directory, STATE_FILE_NAME)
