"""Deploying the example app to the lab: projects, a load generator, host resets."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]
from cli_helpers import LabProject

ROOT = Path(__file__).resolve().parents[2]
PROXY_IMAGE = "localhost:5555/shipyard-proxy:test"


def build_proxy_image() -> str:
    """The proxy image, built from proxy/Dockerfile on the lab's Python base and pushed to
    the lab registry, where hosts pull it through the local-registry tunnel."""
    python = ROOT / ".venv" / "bin" / "python"
    subprocess.run(
        [
            str(python),
            str(ROOT / "scripts" / "build-proxy-image"),
            "--base",
            "pybase:local",
            "--tag",
            PROXY_IMAGE,
            "--push",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return PROXY_IMAGE


def reset_hosts(lab: Any, hosts: list[Any] | None = None) -> None:
    """Every container, image of ours, volume and run directory gone: a fresh server."""
    script = (
        "docker rm -f $(docker ps -aq) >/dev/null 2>&1; "
        "docker volume rm shipyard-proxy-config >/dev/null 2>&1; "
        "docker network rm shipyard >/dev/null 2>&1; "
        "docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -v -e '^busybox:' -e '^pybase:' "
        "| xargs -r docker image rm -f >/dev/null 2>&1; rm -rf /root/.shipyard; true"
    )
    for host in hosts or lab.hosts:
        host.run(script, timeout=120)


class DeployProject(LabProject):
    """The example app in a git repository, configured for lab hosts."""

    def __init__(self, path: Path, lab: Any, *, service: str = "demo") -> None:
        super().__init__(path, lab)
        self.service = service
        for name in ("app.py", "Dockerfile"):
            shutil.copy(ROOT / "examples" / "app" / name, path / name)
        self.git("init", "-q")
        self.commit("initial")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.email=deployer@example.com", "-c", "user.name=Deployer", *args],
            cwd=self.path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def commit(self, message: str) -> str:
        (self.path / "CHANGES").write_text(f"{message}\n")
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "HEAD").strip()

    def configure(self, servers: Any, **extra: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "service": self.service,
            "image": self.service,
            "servers": servers,
            "registry": {"server": "localhost:5555"},
            "builder": {"args": {"BASE": "pybase:local"}},
            "proxy": {
                "run": {
                    "registry": "localhost:5555",
                    "repository": "shipyard-proxy",
                    "version": "test",
                },
                "healthcheck": {"interval": 1, "timeout": 2},
            },
            "env": {"clear": {"APP_NAME": self.service}},
            "deploy_timeout": 20,
            "drain_timeout": 5,
            "readiness_delay": 1,
            "ssh": self.ssh_settings(),
        }
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        (self.path / "config").mkdir(exist_ok=True)
        (self.path / "config" / "deploy.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        return config

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        env.pop("VERSION", None)
        return env


def get(
    address: str, *, host: str | None = None, path: str = "/", timeout: float = 5
) -> tuple[int, str]:
    connection = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Load:
    """Steady traffic against some addresses while a deploy runs; every request that
    does not answer 200 (or fails at the socket) counts as failed."""

    def __init__(
        self, addresses: list[str], *, host: str | None = None, threads_per_address: int = 2
    ) -> None:
        self.addresses = addresses
        self.host = host
        self.threads_per_address = threads_per_address
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.bodies: Counter[str] = Counter()
        self._threads: list[threading.Thread] = []

    def _run(self, address: str, keep_alive: bool) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                if connection is None or not keep_alive:
                    connection = http.client.HTTPConnection(address, 80, timeout=10)
                connection.request("GET", "/", headers={"Host": self.host} if self.host else {})
                response = connection.getresponse()
                body = response.read().decode()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        self.bodies[body.split(" on ")[0]] += 1
                    else:
                        self.failures[f"{address} HTTP {response.status}"] += 1
                if not keep_alive:
                    connection.close()
            except (OSError, http.client.HTTPException) as error:
                with self._lock:
                    self.failures[f"{address} {type(error).__name__}: {error}"] += 1
                connection = None
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for address in self.addresses:
            for index in range(self.threads_per_address):
                thread = threading.Thread(
                    target=self._run, args=(address, index % 2 == 0), daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())
