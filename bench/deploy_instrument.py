"""Run the shipyard CLI with timing marks around a few of its functions.

bench/deploy runs this with shipyard's own Python (`.venv/bin/python
bench/deploy_instrument.py redeploy -P --version V`) to see where a redeploy's wall time
goes: imports, plugin loading, config, SSH connect, pull, boot, retiring the old
container, closing and exit. Each mark is one line on stderr: `@@ <s since start> <thread> > name`
when a function starts and `@@ ... < name <duration>s` when it returns. A function that
does not exist (shipyard changed) is skipped. It changes nothing in shipyard's behaviour.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
import time
from typing import Any, NoReturn

T0 = time.perf_counter()


def mark(message: str) -> None:
    sys.stderr.write(f"@@ {time.perf_counter() - T0:7.3f} {threading.current_thread().name} {message}\n")
    sys.stderr.flush()


mark("python up")
WRAP = [  # (module, attribute path, label)
    ("shipyard.core.plugins", "ShipyardPluginManager.load", "plugin load"),
    ("shipyard.core.config.loader", "load_config", "load config"),
    ("shipyard.plugins._ssh_transport", "open_connection", "ssh connect"),
    ("shipyard.core.lifecycle", "pull", "pull"),
    ("shipyard.core.lifecycle", "boot_app", "boot app"),
    ("shipyard.plugins.app_boot", "retire", "retire"),
    ("shipyard.core.transport", "ConnectionPool.close_all", "close connections"),
]


def wrap(module_name: str, path: str, label: str) -> None:
    try:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        function = getattr(owner, name)
    except (ImportError, AttributeError):
        mark(f"! cannot instrument {module_name}.{path}")
        return

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        mark(f"> {label}")
        try:
            return function(*args, **kwargs)
        finally:
            mark(f"< {label} {time.perf_counter() - started:.3f}s")

    setattr(owner, name, timed)


def main() -> None:
    from shipyard.core.cli import main as cli

    for module_name, path, label in WRAP:
        wrap(module_name, path, label)
    mark("imports done")
    # shipyard ends with os._exit (no atexit handlers): mark the moment it is called.
    real_exit = os._exit

    def marked_exit(code: int) -> NoReturn:
        mark("os._exit")
        real_exit(code)

    os._exit = marked_exit
    sys.argv = ["shipyard", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
