"""Run the real `shipyard` CLI against the lab from a temporary project."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

SHIPYARD = Path(sys.executable).with_name("shipyard")


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def ok(self) -> Run:
        assert self.exit_code == 0, (
            f"exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )
        return self


class LabProject:
    """A project directory whose config points at lab hosts."""

    def __init__(self, path: Path, lab: Any) -> None:
        self.path = path
        self.lab = lab
        path.mkdir(parents=True, exist_ok=True)

    def ssh_settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "user": "root",
            "keys": [str(self.lab.key_path)],
            "keys_only": True,
            "config": False,
            **extra,
        }

    def write_config(self, config: dict[str, Any]) -> None:
        config = {"ssh": self.ssh_settings(), **config}
        (self.path / "config").mkdir(exist_ok=True)
        (self.path / "config" / "deploy.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {"SHIPYARD_SSH_KNOWN_HOSTS": str(self.lab.known_hosts), "VERSION": "v-test"}, **extra
        )
        return env

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SHIPYARD), *args],
            cwd=self.path,
            env=env or self.env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
        completed = subprocess.run(
            [str(SHIPYARD), *args],
            cwd=self.path,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)
