"""Benchmark shipyard-proxy against nginx, haproxy and Caddy on loopback.

Three measurements, all on 127.0.0.1 with servers this script starts itself on high
ports (each with its own config in a temp dir) and stops again on exit:

1. Throughput: `wrk -t1 -c64 --latency` through every proxy and straight to the
   upstream (an nginx returning a 1 KiB body), interleaved round-robin over N rounds
   because this machine's run-to-run spread is up to +-35%. Medians per config, and
   ratios to nginx.
2. Memory: VmRSS (summed over the process tree) of every proxy idle after start and
   with 1,000 open keep-alive client connections.
3. Zero downtime: wrk at full load while the target is switched between two upstreams
   20 times, (a) with both upstreams up and (b) with the old one stopped just after
   each switch; for shipyard-proxy `deploy`, `nginx -s reload` and haproxy's runtime API.

Run it as `bench/proxy` (a launcher for this module). Standard library only, so it runs
under any python3 >= 3.11. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CONF_DIR = BENCH_DIR / "proxy.d"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_SHIPYARD = REPO_DIR / ".venv" / "bin" / "shipyard-proxy"
# The interpreter the proxy image runs on: the lab's image is Debian's python3 (built
# with PGO and LTO, as the python:3.11-slim base is). The dev venv's may be a plain
# source build (pyenv builds without --enable-optimizations), ~10-15% slower here.
DEFAULT_SHIPYARD_PYTHON = Path("/usr/bin/python3")

# Binary -> Debian package that provides it.
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "caddy": "caddy"}

BODY = "x" * 1024  # the upstream's 1 KiB response body
SERVICE = "bench"  # shipyard-proxy service name (catch-all host)

# Throughput configurations, in the order they are listed in reports.
# "shipyard" runs the proxy on --shipyard-python with the dev venv's packages (the
# interpreter it ships on); "shipyard-venv" runs the venv's own shipyard-proxy script.
ALL_CONFIGS = ("direct", "nginx", "haproxy", "caddy", "shipyard", "shipyard-venv")
SHIPYARD_CONFIGS = ("shipyard", "shipyard-venv")
ZD_METHODS = ("shipyard", "nginx", "haproxy")

# Targets from the issue for shipyard-proxy.
TARGET_RPS_RATIO = 0.6  # >= 0.6x nginx req/s
TARGET_P99_RATIO = 2.0  # p99 <= 2x nginx
TARGET_RSS_IDLE_MB = 60.0
TARGET_RSS_1000_MB = 150.0


class BenchError(RuntimeError):
    """A failure that aborts the benchmark with a clear message."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


class Processes:
    """Every process the bench starts, each in its own session (= process group), so
    that stopping one also stops its workers, and nothing outlives the script."""

    def __init__(self, pin: bool) -> None:
        self.procs: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.pin = pin

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        stdout: Path | None = None,
        stderr: Path | None = None,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
        err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=_pin_to(cpus if self.pin else None),
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        finally:
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()  # type: ignore[union-attr]
        self.procs[proc.pid] = (name, proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        self.procs.pop(proc.pid, None)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers that outlived their master (same group) are killed too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs.pop(proc.pid, None)

    def stop_all(self) -> None:
        for _pid, (_name, proc) in list(self.procs.items()):
            self.stop(proc, timeout=3.0)


def proc_tree(root: int) -> list[int]:
    """root and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kb_field(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    rss_mb: float  # sum of VmRSS over the process tree (counts shared pages per process)
    pss_mb: float  # sum of Pss (shared pages split between processes)
    processes: int


def memory_of(pid: int) -> Memory:
    pids = proc_tree(pid)
    rss = sum(_kb_field(Path(f"/proc/{p}/status"), "VmRSS") for p in pids)
    pss = sum(_kb_field(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in pids)
    return Memory(round(rss / 1024, 1), round(pss / 1024, 1), len(pids))


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def children_cpu_seconds() -> float:
    """CPU used by this script's waited-for children so far (that is, wrk)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by pid's process tree. Workers that
    exited in between are lost, which is fine for servers that keep theirs."""
    user = system = 0
    for p in proc_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        user += int(fields[11])  # utime: field 14 of proc(5), counted after "pid (comm)"
        system += int(fields[12])  # stime
    return user / _TICK, system / _TICK


def wait_for_quiet(max_pct: float, timeout: float) -> float:
    """Wait (up to timeout s) until the machine's CPU use over 3 s is below max_pct of
    all CPUs; returns the last figure. Nothing of ours runs yet at this point."""
    deadline = time.monotonic() + timeout
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(3)
        pct = (
            (machine_busy_seconds() - b0) / ((time.monotonic() - t0) * (os.cpu_count() or 1)) * 100
        )
        if pct <= max_pct or time.monotonic() >= deadline:
            return round(pct, 1)
        log(f"machine busy ({pct:.0f}% CPU used by others); waiting for it to calm down")


# --------------------------------------------------------------------------- helpers


def ensure_packages() -> None:
    """Install wrk, nginx-light, haproxy and caddy from Debian if any is missing."""
    missing = sorted({pkg for binary, pkg in PACKAGES.items() if not shutil.which(binary)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(
            f"missing packages {missing}; run as root or: apt-get install {' '.join(missing)}"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )
    still = [b for b in PACKAGES if not shutil.which(b)]
    if still:
        raise BenchError(f"still missing after apt-get install: {still}")


def raise_nofile(want: int = 65536) -> int:
    """The 1,000-connection test needs more descriptors than a default 1024 limit;
    children (the proxies) inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log(f"warning: cannot raise RLIMIT_NOFILE from {soft} to {target}: {exc}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the servers themselves: TIME_WAIT leftovers of a previous run don't
        # block the port, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BenchError(
                f"port {port} is in use ({exc.strerror}); is another bench running? "
                "Pick other ports with --base-port / --shipyard-port"
            ) from exc


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    logfile: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = _tail(logfile) if logfile else ""
            raise BenchError(f"{what}: process exited with code {proc.returncode}{tail}")
        if check():
            return
        time.sleep(0.05)
    tail = _tail(logfile) if logfile else ""
    raise BenchError(f"{what}: not ready after {timeout:.0f}s{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  " + "\n  ".join(text) if text else ""


# No proxies from the environment (http_proxy etc.): every request stays on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_ok(port: int, path: str = "/") -> bool:
    try:
        return http_get(port, path, timeout=1.0)[0] == 200
    except OSError:
        return False


def render(template: str, dest: Path, **values: object) -> Path:
    """Fill @@NAME@@ placeholders (nginx and haproxy configs are full of $ and {})."""
    text = (CONF_DIR / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise BenchError(f"{template}: unfilled placeholders {sorted(set(left))}")
    dest.write_text(text)
    return dest


# --------------------------------------------------------------------------- servers


@dataclass
class Nginx:
    """An nginx master (daemon off, so the Popen is the master) with its own prefix dir."""

    name: str
    dir: Path
    template: str
    port: int
    upstream_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "nginx.conf"

    def write_conf(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        render(
            self.template,
            self.conf,
            DIR=self.dir,
            PORT=self.port,
            UPSTREAM_PORT=self.upstream_port,
            BODY=BODY,
        )

    def argv(self, *extra: str) -> list[str]:
        # -e: don't touch /var/log/nginx/error.log before the config is read.
        return [
            "nginx",
            "-p",
            str(self.dir),
            "-c",
            str(self.conf),
            "-e",
            str(self.dir / "error.log"),
            *extra,
        ]

    def start(self, procs: Processes, cpus: set[int] | None) -> None:
        self.write_conf()
        check_port_free(self.port)
        self.proc = procs.spawn(self.name, self.argv(), stderr=self.dir / "stderr.log", cpus=cpus)
        wait_for(
            f"{self.name} on :{self.port}",
            lambda: http_ok(self.port, "/up") or self._proxy_up(),
            10,
            self.proc,
            self.dir / "error.log",
        )

    def _proxy_up(self) -> bool:
        # A proxy config is "up" once it answers at all (its upstream may be a
        # second nginx that is checked separately).
        try:
            http_get(self.port, "/", timeout=1.0)
            return True
        except OSError:
            return False

    def workers(self) -> set[int]:
        assert self.proc is not None
        return set(proc_tree(self.proc.pid)) - {self.proc.pid}

    def reload(self, upstream_port: int) -> None:
        """Rewrite the upstream and `nginx -s reload`; return once a new worker runs."""
        before = self.workers()
        self.upstream_port = upstream_port
        self.write_conf()
        res = subprocess.run(self.argv("-s", "reload"), capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise BenchError(f"nginx -s reload failed: {res.stderr.strip()}")
        wait_for(f"{self.name} reload", lambda: bool(self.workers() - before), 10)

    def quit(self, procs: Processes) -> None:
        """Graceful stop (`nginx -s quit`): in-flight requests finish, idle keep-alive
        connections are closed."""
        assert self.proc is not None
        res = subprocess.run(self.argv("-s", "quit"), capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise BenchError(f"nginx -s quit failed: {res.stderr.strip()}")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"warning: {self.name} did not quit gracefully in 10s; killing it")
        procs.stop(self.proc)
        self.proc = None


@dataclass
class HAProxy:
    name: str
    dir: Path
    port: int
    upstream_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.dir / "haproxy.sock"

    def start(self, procs: Processes, cpus: set[int] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = render(
            "haproxy.cfg.tmpl",
            self.dir / "haproxy.cfg",
            DIR=self.dir,
            PORT=self.port,
            UPSTREAM_PORT=self.upstream_port,
        )
        check_port_free(self.port)
        # -db: stay in the foreground; the access log goes to stdout -> access.log.
        self.proc = procs.spawn(
            self.name,
            ["haproxy", "-db", "-f", str(cfg)],
            stdout=self.dir / "access.log",
            stderr=self.dir / "stderr.log",
            cpus=cpus,
        )
        wait_for(
            f"{self.name} on :{self.port}",
            lambda: http_ok(self.port) and self.sock.exists(),
            10,
            self.proc,
            self.dir / "stderr.log",
        )

    def command(self, cmd: str) -> str:
        """One runtime-API command over the stats socket (what socat would do)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()

    def switch(self, upstream_port: int) -> None:
        out = self.command(f"set server be/srv addr 127.0.0.1 port {upstream_port}")
        # haproxy answers "IP changed from ... port changed from ..." (or nothing if
        # nothing changed); anything mentioning an error means the switch failed.
        if re.search(r"(?i)error|unknown|not found|denied|require", out):
            raise BenchError(f"haproxy runtime API refused the switch: {out}")
        self.upstream_port = upstream_port


@dataclass
class Caddy:
    name: str
    dir: Path
    port: int
    upstream_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, procs: Processes, cpus: set[int] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = render(
            "Caddyfile.tmpl",
            self.dir / "Caddyfile",
            DIR=self.dir,
            PORT=self.port,
            UPSTREAM_PORT=self.upstream_port,
        )
        check_port_free(self.port)
        # Caddy keeps state under $HOME / $XDG_*: keep it inside the temp dir.
        env = {
            **os.environ,
            "HOME": str(self.dir),
            "XDG_DATA_HOME": str(self.dir / "data"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        self.proc = procs.spawn(
            self.name,
            ["caddy", "run", "--config", str(cfg), "--adapter", "caddyfile"],
            stdout=self.dir / "stdout.log",
            stderr=self.dir / "stderr.log",
            env=env,
            cpus=cpus,
        )
        wait_for(
            f"{self.name} on :{self.port}",
            lambda: http_ok(self.port),
            15,
            self.proc,
            self.dir / "stderr.log",
        )


@dataclass
class Shipyard:
    command: list[str]  # argv prefix that runs the shipyard-proxy CLI
    dir: Path
    http_port: int
    https_port: int
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    deploys: list[float] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "HOME": str(home),
            "KAMAL_PROXY_SOCKET": str(self.dir / "kamal-proxy.sock"),
            "XDG_RUNTIME_DIR": str(self.dir),
        }

    def start(self, procs: Processes, cpus: set[int] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for port in (self.http_port, self.https_port, self.metrics_port):
            check_port_free(port)
        argv = [
            *self.command,
            "run",
            "--http-port",
            str(self.http_port),
            "--https-port",
            str(self.https_port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        # stdout carries the JSON access log: keep it (to a file), it is part of the cost.
        self.proc = procs.spawn(
            "shipyard-proxy",
            argv,
            stdout=self.dir / "access.log",
            stderr=self.dir / "stderr.log",
            env=self.env,
            cpus=cpus,
        )
        sock = self.dir / "kamal-proxy.sock"
        wait_for(
            "shipyard-proxy control socket",
            lambda: sock.exists() and _port_open(self.http_port),
            15,
            self.proc,
            self.dir / "stderr.log",
        )

    def deploy(self, upstream_port: int) -> float:
        """`shipyard-proxy deploy`; blocks until healthy, switched and drained."""
        argv = [
            *self.command,
            "deploy",
            SERVICE,
            "--target",
            f"127.0.0.1:{upstream_port}",
            "--health-check-path",
            "/up",
            "--health-check-interval",
            "100ms",
            "--deploy-timeout",
            "10s",
            "--drain-timeout",
            "5s",
        ]
        t0 = time.monotonic()
        try:
            res = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("shipyard-proxy deploy hung for 60s") from exc
        took = time.monotonic() - t0
        if res.returncode != 0:
            raise BenchError(
                f"shipyard-proxy deploy to :{upstream_port} exited {res.returncode}: "
                f"{(res.stderr or res.stdout).strip()}"
            )
        self.deploys.append(took)
        return took

    def metrics_ok(self) -> bool:
        try:
            status, body = http_get(self.metrics_port, "/metrics")
        except OSError:
            return False
        return status == 200 and bool(body)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# Runs the proxy CLI on another interpreter with the venv's packages: addsitedir also
# reads the venv's .pth files, so the editable install of this checkout is what runs.
_ON_OTHER_PYTHON = (
    "import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = 'shipyard-proxy'; "
    "from shipyard.proxy.cli import main; sys.exit(main())"
)
_PYTHON_FACTS = (
    "import sys, sysconfig; print(sysconfig.get_config_var('SOABI')); "
    "print(sysconfig.get_paths()['purelib']); print(sys.version.split()[0])"
)


@functools.cache
def python_facts(python: Path) -> tuple[str, str, str]:
    """(SOABI, site-packages, version) of an interpreter."""
    res = subprocess.run(
        [str(python), "-c", _PYTHON_FACTS], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise BenchError(f"{python} -c ...: exited {res.returncode}: {res.stderr.strip()}")
    soabi, site_dir, version = res.stdout.split()
    return soabi, site_dir, version


def shipyard_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The argv prefix that runs shipyard-proxy for each shipyard config."""
    venv_python = args.shipyard_proxy.parent / "python"
    commands = {"shipyard-venv": [str(args.shipyard_proxy)]}
    if "shipyard" in args.configs:
        if not args.shipyard_python.exists():
            raise BenchError(
                f"--shipyard-python {args.shipyard_python} does not exist (install Debian's "
                "python3, or pass another interpreter)"
            )
        soabi, _, _ = python_facts(args.shipyard_python)
        venv_soabi, venv_site, _ = python_facts(venv_python)
        if soabi != venv_soabi:
            raise BenchError(
                f"--shipyard-python {args.shipyard_python} is {soabi}, but the venv's "
                f"packages are built for {venv_soabi}: pass a matching interpreter, or "
                "measure only the venv with --configs ...,shipyard-venv"
            )
        commands["shipyard"] = [str(args.shipyard_python), "-c", _ON_OTHER_PYTHON, venv_site]
    return commands


def shipyard_usable(command: list[str]) -> str | None:
    """None if `shipyard-proxy run --help` works, else why not."""
    if not Path(command[0]).exists():
        return f"{command[0]} does not exist"
    try:
        res = subprocess.run(
            [*command, "run", "--help"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command[0]} run --help: {exc}"
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`{shlex.join(command[:2])} ... run --help` exited {res.returncode}: {last[0]}"
    return None


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise BenchError(f"cannot parse wrk duration {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: dict[str, int]  # connect / read / write / timeout
    status_errors: int  # wrk's "Non-2xx or 3xx responses" (counts status >= 400)
    non2xx: int | None  # from the Lua response() counter, zero-downtime runs only
    lua: dict[str, int]

    @property
    def failed(self) -> int:
        non2xx = self.non2xx if self.non2xx is not None else self.status_errors
        return non2xx + sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's --latency text output (plus the WRKJSON line our Lua prints)."""

    def grab(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise BenchError(f"unexpected wrk output (no match for {pattern!r}):\n{text}")
        return m

    rps = float(grab(r"^Requests/sec:\s+([\d.]+)").group(1))
    p50 = _ms(grab(r"^\s+50%\s+(\S+)").group(1))
    p99 = _ms(grab(r"^\s+99%\s+(\S+)").group(1))
    requests = int(grab(r"^\s+(\d+) requests in").group(1))
    sock = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        sock = dict(zip(sock, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    status = int(m.group(1)) if m else 0
    lua: dict[str, int] = {}
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.MULTILINE)
    if m:
        lua = json.loads(m.group(1))
        # Cross-check the text against the Lua summary: both come from the same counters.
        if lua["requests"] != requests or lua["status"] != status:
            log(f"warning: wrk text and Lua summary disagree: {requests}/{status} vs {lua}")
    return WrkResult(rps, p50, p99, requests, sock, status, lua.get("non2xx"), lua)


@dataclass
class Wrk:
    threads: int
    connections: int
    procs: Processes
    cpus: set[int] | None

    def argv(self, url: str, duration: str, script: str) -> list[str]:
        return [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{duration}",
            "--latency",
            "-s",
            str(CONF_DIR / script),
            url,
        ]

    def run(self, url: str, seconds: int, script: str = "summary.lua") -> WrkResult:
        # wrk only takes whole seconds.
        argv = self.argv(url, f"{seconds}s", script)
        preexec = _pin_to(self.cpus if self.procs.pin else None)
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            start_new_session=True,
            preexec_fn=preexec,
        )
        if res.returncode != 0:
            raise BenchError(
                f"wrk failed ({res.returncode}): {(res.stderr or res.stdout).strip()[:2000]}"
            )
        return parse_wrk(res.stdout)

    @contextlib.contextmanager
    def background(self, url: str, script: str, out: Path) -> Iterator[Callable[[], WrkResult]]:
        """wrk under full load until the caller calls the yielded stop(); wrk ends
        cleanly on SIGINT (prints its summary and runs the Lua done())."""
        proc = self.procs.spawn(
            "wrk", self.argv(url, "3600s", script), stdout=out, stderr=out, cpus=self.cpus
        )
        result: list[WrkResult] = []

        def stop() -> WrkResult:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired as exc:
                raise BenchError("wrk did not stop on SIGINT") from exc
            self.procs.forget(proc)
            result.append(parse_wrk(out.read_text()))
            return result[0]

        try:
            yield stop
        finally:
            if proc.poll() is None:
                self.procs.stop(proc)


# --------------------------------------------------------------------------- 1,000 connections


@contextlib.contextmanager
def open_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def one_request_each(socks: list[socket.socket]) -> int:
    """Send one keep-alive GET on every connection (all first, then read all, so the
    proxy holds them concurrently) and return how many got a 200 with the full body."""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"
    for s in socks:
        s.sendall(req)
    ok = 0
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        if head.startswith(b"HTTP/1.1 200") and len(body) == length == len(BODY):
            ok += 1
    return ok


# --------------------------------------------------------------------------- phases


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes
    tmp: Path
    cpus_servers: set[int] | None
    wrk: Wrk
    upstream: Nginx | None = None
    proxies: dict[str, Any] = field(default_factory=dict)  # config -> server object
    ports: dict[str, int] = field(default_factory=dict)  # config -> port wrk hits
    results: dict[str, Any] = field(default_factory=dict)

    def start_servers(self) -> None:
        base = self.args.base_port
        up_port = base
        self.upstream = Nginx(
            "upstream", self.tmp / "upstream", "upstream-nginx.conf.tmpl", up_port
        )
        self.upstream.start(self.procs, self.cpus_servers)
        status, body = http_get(up_port)
        if status != 200 or body != BODY.encode():
            raise BenchError(
                f"upstream answered {status} with {len(body)} bytes, expected 200 and 1024"
            )
        self.ports["direct"] = up_port
        configs = self.args.configs
        if "nginx" in configs:
            n = Nginx("nginx-proxy", self.tmp / "nginx", "nginx-proxy.conf.tmpl", base + 1, up_port)
            n.start(self.procs, self.cpus_servers)
            self.proxies["nginx"], self.ports["nginx"] = n, n.port
        if "haproxy" in configs:
            h = HAProxy("haproxy", self.tmp / "haproxy", base + 2, up_port)
            h.start(self.procs, self.cpus_servers)
            self.proxies["haproxy"], self.ports["haproxy"] = h, h.port
        if "caddy" in configs:
            c = Caddy("caddy", self.tmp / "caddy", base + 3, up_port)
            c.start(self.procs, self.cpus_servers)
            self.proxies["caddy"], self.ports["caddy"] = c, c.port
        for offset, name in enumerate(SHIPYARD_CONFIGS):
            if name not in configs:
                continue
            # shipyard-venv's ports are shipyard's plus 3.
            s = Shipyard(
                self.args.shipyard_commands[name],
                self.tmp / name,
                self.args.shipyard_port + 3 * offset,
                self.args.shipyard_https_port + 3 * offset,
                self.args.shipyard_metrics_port + 3 * offset,
            )
            s.start(self.procs, self.cpus_servers)
            took = s.deploy(up_port)
            log(f"{name}: deploy to upstream took {took:.2f}s")
            if not s.metrics_ok():
                log(f"warning: {name} metrics not served on :{s.metrics_port}/metrics")
            self.results.setdefault("shipyard_metrics_served", {})[name] = s.metrics_ok()
            self.proxies[name], self.ports[name] = s, s.http_port
        # Every config must return exactly what the upstream returns before we time it.
        for name in configs:
            port = self.ports[name]
            try:
                status, body = http_get(port)
            except OSError as exc:
                raise BenchError(f"{name} on :{port}: GET / failed: {exc}") from exc
            if status != 200 or body != BODY.encode():
                raise BenchError(
                    f"{name} on :{port}: GET / answered {status} with {len(body)} bytes"
                )

    def server_pid(self, name: str) -> int:
        proxy = self.upstream if name == "direct" else self.proxies[name]
        assert proxy is not None and proxy.proc is not None
        return int(proxy.proc.pid)

    # ---- memory

    def measure_idle_memory(self) -> None:
        time.sleep(1.0)  # let start-up allocations settle
        idle = {
            name: asdict(memory_of(self.server_pid(name)))
            for name in self.args.configs
            if name != "direct"
        }
        self.results["memory_idle"] = idle
        for name, mem in idle.items():
            log(f"idle memory {name}: {mem['rss_mb']} MB RSS ({mem['processes']} processes)")

    def measure_connections_memory(self) -> None:
        n = self.args.conns
        out: dict[str, Any] = {}
        for name in self.args.configs:
            if name == "direct":
                continue
            pid, port = self.server_pid(name), self.ports[name]
            entry: dict[str, Any] = {"before": asdict(memory_of(pid))}
            try:
                with open_connections(port, n) as socks:
                    time.sleep(1.0)
                    entry["idle_connections"] = asdict(memory_of(pid))
                    entry["ok_responses"] = one_request_each(socks)
                    time.sleep(1.0)
                    entry["after_one_request_each"] = asdict(memory_of(pid))
            except OSError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                log(f"warning: {n} connections to {name}: {entry['error']}")
            time.sleep(1.0)
            entry["after_close"] = asdict(memory_of(pid))
            out[name] = entry
            log(
                f"{n} connections {name}: idle {entry.get('idle_connections', {}).get('rss_mb')} MB, "
                f"after a request each {entry.get('after_one_request_each', {}).get('rss_mb')} MB "
                f"({entry.get('ok_responses')}/{n} ok)"
            )
        self.results["memory_connections"] = {"count": n, "by_config": out}

    # ---- throughput

    def measure_once(self, name: str) -> dict[str, Any]:
        """Warm up, then one measured wrk run against config `name`."""
        url = f"http://127.0.0.1:{self.ports[name]}/"
        if self.args.warmup > 0:
            self.wrk.run(url, self.args.warmup)
        pid, up_pid = self.server_pid(name), self.server_pid("direct")
        u0, s0 = cpu_seconds(pid)
        up0 = sum(cpu_seconds(up_pid)) if name != "direct" else 0.0
        busy0, wrk0, t0 = machine_busy_seconds(), children_cpu_seconds(), time.monotonic()
        res = self.wrk.run(url, self.args.duration)
        busy1, wrk1, t1 = machine_busy_seconds(), children_cpu_seconds(), time.monotonic()
        u1, s1 = cpu_seconds(pid)
        up1 = sum(cpu_seconds(up_pid)) if name != "direct" else 0.0
        # CPU the server under test spent per request (the upstream's for "direct"):
        # where a proxy's time goes, user space vs kernel.
        n = max(res.requests, 1)
        # Whatever else ran meanwhile (other people's builds and tests on a shared
        # machine), as % of all CPUs: a high figure flags a disturbed run.
        other = (busy1 - busy0) - (u1 - u0 + s1 - s0) - (up1 - up0) - (wrk1 - wrk0)
        return asdict(res) | {
            "failed": res.failed,
            "cpu_user_us_per_req": round((u1 - u0) / n * 1e6, 1),
            "cpu_sys_us_per_req": round((s1 - s0) / n * 1e6, 1),
            "other_cpu_pct": round(max(0.0, other) / ((t1 - t0) * (os.cpu_count() or 1)) * 100, 1),
        }

    def throughput(self) -> None:
        configs = list(self.args.configs)
        rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        for r in range(self.args.rounds):
            # Rotate the order every round so no config always follows the same one.
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for name in order:
                for attempt in range(1 + self.args.retries):
                    run = self.measure_once(name)
                    disturbed = run["other_cpu_pct"] > self.args.max_other_load
                    log(
                        f"round {r + 1}/{self.args.rounds} {name:9s} {run['rps']:9.0f} req/s  "
                        f"p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  "
                        f"errors {run['failed']}  CPU/req {run['cpu_user_us_per_req']:.1f} us "
                        f"user + {run['cpu_sys_us_per_req']:.1f} us sys  "
                        f"other load {run['other_cpu_pct']:.0f}%"
                        + (
                            "  (disturbed: measuring again)"
                            if disturbed and attempt < self.args.retries
                            else ""
                        )
                    )
                    run["attempt"] = attempt + 1
                    if not disturbed:
                        break
                rounds[name].append(run)
        summary: dict[str, Any] = {}
        for name in configs:
            runs = rounds[name]
            summary[name] = {
                "rps": statistics.median(x["rps"] for x in runs),
                "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                "rps_min": min(x["rps"] for x in runs),
                "rps_max": max(x["rps"] for x in runs),
                "errors": sum(x["failed"] for x in runs),
                "cpu_user_us_per_req": statistics.median(x["cpu_user_us_per_req"] for x in runs),
                "cpu_sys_us_per_req": statistics.median(x["cpu_sys_us_per_req"] for x in runs),
                "other_cpu_pct_max": max(x["other_cpu_pct"] for x in runs),
                "runs": runs,
            }
        if "nginx" in summary:
            ref = summary["nginx"]
            for s in summary.values():
                s["rps_x_nginx"] = round(s["rps"] / ref["rps"], 3)
                s["p50_x_nginx"] = round(s["p50_ms"] / ref["p50_ms"], 3)
                s["p99_x_nginx"] = round(s["p99_ms"] / ref["p99_ms"], 3)
                # Paired per-round ratios: each round's runs are minutes apart at most,
                # so this is less sensitive to slow drift of the machine.
                s["rps_x_nginx_paired_median"] = round(
                    statistics.median(
                        a["rps"] / b["rps"] for a, b in zip(s["runs"], ref["runs"], strict=True)
                    ),
                    3,
                )
        add_quiet_stats(summary, self.args.max_other_load)
        self.results["throughput"] = summary
        self.results["log_bytes"] = self.log_sizes()

    def profile(self, out: Path) -> None:
        """py-spy samples shipyard-proxy during one extra wrk run (not part of the
        throughput figures: sampling slows the process a little). The raw stacks go to
        `out`, a summary of the hottest lines and functions into the results."""
        pyspy = self.args.py_spy or shutil.which("py-spy")
        if not pyspy:
            raise BenchError(
                "--profile needs py-spy: python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip "
                "install py-spy, then pass --py-spy /tmp/pyspy/bin/py-spy"
            )
        secs = max(self.args.duration, 5)
        pid = self.server_pid("shipyard")
        url = f"http://127.0.0.1:{self.ports['shipyard']}/"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(pyspy), "record", "-p", str(pid), "-d", str(secs), "-r", "250"]
        argv += ["-f", "raw", "-o", str(out), *self.args.py_spy_args]
        # Don't pause the process to sample it, unless native stacks need that.
        if "--native" not in self.args.py_spy_args:
            argv.append("--nonblocking")
        spy = self.procs.spawn("py-spy", argv, stderr=self.tmp / "py-spy.log")
        time.sleep(0.5)
        res = self.wrk.run(url, secs + 1)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("py-spy did not finish") from exc
        finally:
            self.procs.stop(spy)
        if not out.exists():
            raise BenchError(f"py-spy wrote nothing{_tail(self.tmp / 'py-spy.log')}")
        self.results["profile"] = {"raw": str(out), "rps_while_sampled": res.rps}
        self.results["profile"] |= summarize_profile(out)

    def log_sizes(self) -> dict[str, int]:
        """Access-log sizes: evidence that every proxy logged every request."""
        files = {
            "nginx": "nginx/access.log",
            "haproxy": "haproxy/access.log",
            "caddy": "caddy/access.log",
            "shipyard": "shipyard/access.log",
            "shipyard-venv": "shipyard-venv/access.log",
        }
        out = {}
        for name, rel in files.items():
            p = self.tmp / rel
            if name in self.args.configs and p.exists():
                out[name] = p.stat().st_size
        return out

    # ---- zero downtime

    def zero_downtime(self) -> None:
        methods = [
            m for m in self.args.zd_methods if m != "shipyard" or "shipyard" in self.args.configs
        ]
        base = self.args.base_port
        ups = [
            Nginx(
                f"zd-upstream-{i}",
                self.tmp / f"zd-upstream-{i}",
                "upstream-nginx.conf.tmpl",
                base + 10 + i,
            )
            for i in (0, 1)
        ]
        for u in ups:
            u.start(self.procs, self.cpus_servers)
        runs: list[dict[str, Any]] = []
        for rep in range(self.args.zd_runs):
            for stop_old in (False, True):
                for method in methods:
                    label = (
                        f"{method} {'(b) old stopped' if stop_old else '(a) both up'} run {rep + 1}"
                    )
                    try:
                        res = self.zd_run(method, ups, stop_old, rep)
                    except BenchError as exc:
                        log(f"zero-downtime {label}: ERROR {exc}")
                        res = {"error": str(exc)}
                    res.update(method=method, stop_old=stop_old, run=rep + 1)
                    runs.append(res)
                    if "failed" in res:
                        log(
                            f"zero-downtime {label}: {res['failed']} failed of {res['requests']} "
                            f"(non-2xx {res['non2xx']}, socket {res['socket_errors']})"
                        )
                    # Both upstreams up again for the next run, whatever happened.
                    for u in ups:
                        if u.proc is None or u.proc.poll() is not None:
                            u.start(self.procs, self.cpus_servers)
        self.results["zero_downtime"] = {
            "swaps": self.args.swaps,
            "stop_delay_s": self.args.stop_delay,
            "swap_interval_s": self.args.swap_interval,
            "runs": runs,
        }

    def zd_run(self, method: str, ups: list[Nginx], stop_old: bool, rep: int) -> dict[str, Any]:
        base = self.args.base_port
        tag = f"{method}-{'b' if stop_old else 'a'}-{rep + 1}"
        switch: Callable[[int], None]
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        if method == "shipyard":
            ship: Shipyard = self.proxies["shipyard"]
            ship.deploy(ups[0].port)
            port = ship.http_port

            def switch(p: int) -> None:
                ship.deploy(p)
        elif method == "nginx":
            ngx = Nginx(
                f"zd-nginx-{tag}",
                self.tmp / f"zd-nginx-{tag}",
                "nginx-proxy.conf.tmpl",
                base + 21,
                ups[0].port,
            )
            ngx.start(self.procs, self.cpus_servers)
            port, switch = ngx.port, ngx.reload

            def cleanup() -> None:
                if ngx.proc is not None:
                    self.procs.stop(ngx.proc)
        elif method == "haproxy":
            hap = HAProxy(
                f"zd-haproxy-{tag}", self.tmp / f"zd-haproxy-{tag}", base + 22, ups[0].port
            )
            hap.start(self.procs, self.cpus_servers)
            port, switch = hap.port, hap.switch

            def cleanup() -> None:
                if hap.proc is not None:
                    self.procs.stop(hap.proc)
        else:
            raise BenchError(f"unknown zero-downtime method {method}")
        try:
            status, _ = http_get(port)
            if status != 200:
                raise BenchError(f"{method} on :{port} answered {status} before the run")
            switch_times: list[float] = []
            url = f"http://127.0.0.1:{port}/"
            with self.wrk.background(
                url, "count_responses.lua", self.tmp / f"wrk-{tag}.txt"
            ) as stop_wrk:
                time.sleep(1.0)  # full load before the first switch
                current = 0
                for _ in range(self.args.swaps):
                    t0 = time.monotonic()
                    nxt = 1 - current
                    switch(ups[nxt].port)
                    switch_times.append(time.monotonic() - t0)
                    if stop_old:
                        time.sleep(self.args.stop_delay)
                        ups[current].quit(self.procs)
                        # Restart it now so it is healthy long before the next switch.
                        ups[current].start(self.procs, self.cpus_servers)
                    current = nxt
                    time.sleep(max(0.0, self.args.swap_interval - (time.monotonic() - t0)))
                time.sleep(1.0)  # requests after the last switch count too
                res = stop_wrk()
        finally:
            cleanup()
        return {
            "requests": res.requests,
            "rps": res.rps,
            "p99_ms": res.p99_ms,
            "failed": res.failed,
            "non2xx": res.non2xx,
            "socket_errors": res.socket_errors,
            "lua": res.lua,
            "switch_s_median": round(statistics.median(switch_times), 3),
            "switch_s_max": round(max(switch_times), 3),
        }


# --------------------------------------------------------------------------- report


def summarize_profile(raw: Path, top: int = 20) -> dict[str, list[str]]:
    """Top lines by own time and top functions by inclusive time from py-spy's raw
    (collapsed stacks) output. Own time on a line that calls into C (a transport
    write, say) includes that call, and so the syscall behind it."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        # Inclusive per function (file:line dropped), each function once per stack.
        for func in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            incl[func] = incl.get(func, 0) + n
    if not total:
        return {"own": [], "inclusive": []}

    def fmt(d: dict[str, int]) -> list[str]:
        best = sorted(d.items(), key=lambda kv: -kv[1])
        return [f"{n / total * 100:5.1f}% {f}" for f, n in best if n / total < 0.97][:top]

    return {"own": fmt(own), "inclusive": fmt(incl), "samples": [str(total)]}


def add_quiet_stats(tp: dict[str, Any], max_other: float) -> None:
    """Medians over the undisturbed runs only (other processes used at most max_other %
    of the CPU): on a shared machine these are the figures to trust, when there are any."""
    for s in tp.values():
        quiet = [r for r in s["runs"] if r["other_cpu_pct"] <= max_other]
        s["quiet"] = {"max_other_cpu_pct": max_other, "n": len(quiet)}
        if quiet:
            s["quiet"] |= {
                "rps": statistics.median(r["rps"] for r in quiet),
                "p50_ms": statistics.median(r["p50_ms"] for r in quiet),
                "p99_ms": statistics.median(r["p99_ms"] for r in quiet),
            }
    ref = tp.get("nginx", {}).get("quiet", {})
    if ref.get("n"):
        for s in tp.values():
            q = s["quiet"]
            if q["n"]:
                q["rps_x_nginx"] = round(q["rps"] / ref["rps"], 3)
                q["p99_x_nginx"] = round(q["p99_ms"] / ref["p99_ms"], 3)


def fmt_table(results: dict[str, Any], configs: list[str]) -> str:
    lines: list[str] = []
    tp = results.get("throughput")
    names = {
        "direct": "no proxy (upstream)",
        "nginx": "nginx 1 worker",
        "haproxy": "haproxy 1 thread",
        "caddy": "Caddy",
        "shipyard": "shipyard-proxy",
        "shipyard-venv": "shipyard-proxy, dev venv's Python",
    }
    if tp:
        lines += [
            "| config | req/s | x nginx | p50 ms | p99 ms | p99 x nginx | req/s min-max "
            "| server CPU us/req user + sys | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in configs:
            s = tp[name]
            lines.append(
                f"| {names[name]} | {s['rps']:,.0f} | {s.get('rps_x_nginx', float('nan')):.2f} | "
                f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s.get('p99_x_nginx', float('nan')):.2f} | "
                f"{s['rps_min']:,.0f}-{s['rps_max']:,.0f} | "
                f"{s['cpu_user_us_per_req']:.1f} + {s['cpu_sys_us_per_req']:.1f} | {s['errors']} |"
            )
        others = [r["other_cpu_pct"] for name in configs for r in tp[name]["runs"]]
        q0 = tp[configs[0]].get("quiet", {})
        if q0:
            lines += [
                "",
                f"Undisturbed runs only (other processes used <= {q0['max_other_cpu_pct']:g}% of "
                "the CPU):",
                "",
                "| config | runs | req/s | x nginx | p50 ms | p99 ms | p99 x nginx |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name in configs:
                q = tp[name]["quiet"]
                if not q["n"]:
                    lines.append(f"| {names[name]} | 0 | - | - | - | - | - |")
                    continue
                lines.append(
                    f"| {names[name]} | {q['n']} | {q['rps']:,.0f} | "
                    f"{q.get('rps_x_nginx', float('nan')):.2f} | {q['p50_ms']:.2f} | "
                    f"{q['p99_ms']:.2f} | {q.get('p99_x_nginx', float('nan')):.2f} |"
                )
        lines += [
            "",
            f"CPU used by other processes during the measured runs: median "
            f"{statistics.median(others):.0f}%, max {max(others):.0f}% of the machine.",
            "",
        ]
    mi, mc = results.get("memory_idle"), results.get("memory_connections")
    if mi:
        n = mc["count"] if mc else 0
        lines += [
            f"| proxy | RSS idle MB | RSS after the throughput runs MB | RSS {n} idle conns MB "
            f"| RSS {n} conns, 1 request each MB | same, PSS MB | RSS after closing them MB "
            "| processes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, mem in mi.items():
            c = (mc or {}).get("by_config", {}).get(name, {})
            ic, ar = c.get("idle_connections", {}), c.get("after_one_request_each", {})
            before, after = c.get("before", {}), c.get("after_close", {})
            lines.append(
                f"| {names[name]} | {mem['rss_mb']} | {before.get('rss_mb', '-')} | "
                f"{ic.get('rss_mb', '-')} | {ar.get('rss_mb', '-')} | {ar.get('pss_mb', '-')} | "
                f"{after.get('rss_mb', '-')} | {mem['processes']} |"
            )
        lines.append("")
    zd = results.get("zero_downtime")
    if zd:
        method_names = {
            "shipyard": "shipyard-proxy deploy",
            "nginx": "`nginx -s reload`",
            "haproxy": "haproxy runtime API (`set server addr`)",
        }
        lines += [
            f"| switch method ({zd['swaps']} switches under load) | failed, both upstreams up | "
            f"failed, old upstream stopped after each switch | requests per run | switch time median / max s |",
            "|---|---:|---:|---:|---:|",
        ]
        by: dict[str, dict[bool, list[dict[str, Any]]]] = {}
        for run in zd["runs"]:
            by.setdefault(run["method"], {}).setdefault(run["stop_old"], []).append(run)

        def cell(runs: list[dict[str, Any]]) -> str:
            parts = []
            for r in runs:
                if "error" in r:
                    parts.append("error")
                    continue
                detail = ", ".join(f"{k} {v}" for k, v in r["socket_errors"].items() if v)
                if r["non2xx"]:
                    detail = ", ".join(filter(None, [f"non-2xx {r['non2xx']}", detail]))
                parts.append(f"{r['failed']}" + (f" ({detail})" if detail else ""))
            return " / ".join(parts) or "-"

        for method, d in by.items():
            allr = [r for rs in d.values() for r in rs if "error" not in r]
            reqs = "-" if not allr else f"{statistics.median(r['requests'] for r in allr):,.0f}"
            sw = (
                "-"
                if not allr
                else (
                    f"{statistics.median(r['switch_s_median'] for r in allr):.3f} / "
                    f"{max(r['switch_s_max'] for r in allr):.3f}"
                )
            )
            lines.append(
                f"| {method_names[method]} | {cell(d.get(False, []))} | {cell(d.get(True, []))} | {reqs} | {sw} |"
            )
        lines.append("")
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    out = []
    tp = results.get("throughput", {})
    if "shipyard" in tp and "nginx" in tp:
        s = tp["shipyard"]
        out.append(
            f"{'PASS' if s['rps_x_nginx'] >= TARGET_RPS_RATIO else 'FAIL'}: req/s {s['rps_x_nginx']:.2f}x nginx (target >= {TARGET_RPS_RATIO})"
        )
        out.append(
            f"{'PASS' if s['p99_x_nginx'] <= TARGET_P99_RATIO else 'FAIL'}: p99 {s['p99_x_nginx']:.2f}x nginx (target <= {TARGET_P99_RATIO})"
        )
    mi = results.get("memory_idle", {}).get("shipyard")
    if mi:
        out.append(
            f"{'PASS' if mi['rss_mb'] < TARGET_RSS_IDLE_MB else 'FAIL'}: idle RSS {mi['rss_mb']} MB (target < {TARGET_RSS_IDLE_MB:.0f})"
        )
    mc = results.get("memory_connections", {}).get("by_config", {}).get("shipyard", {})
    if mc.get("after_one_request_each"):
        rss = max(mc["idle_connections"]["rss_mb"], mc["after_one_request_each"]["rss_mb"])
        out.append(
            f"{'PASS' if rss < TARGET_RSS_1000_MB else 'FAIL'}: RSS with {results['memory_connections']['count']} connections {rss} MB (target < {TARGET_RSS_1000_MB:.0f})"
        )
    zd = [r for r in results.get("zero_downtime", {}).get("runs", []) if r["method"] == "shipyard"]
    if zd:
        bad = [r for r in zd if r.get("failed", 1) != 0]
        out.append(
            f"{'PASS' if not bad else 'FAIL'}: zero-downtime deploys, {sum(r.get('failed', 0) for r in zd)} failed requests"
            + (
                f", {sum('error' in r for r in zd)} runs errored"
                if any("error" in r for r in zd)
                else ""
            )
        )
    return out


def versions(args: argparse.Namespace) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable: {exc}"
        return ((res.stdout + res.stderr).strip().splitlines() or [""])[0]

    out = {
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "caddy": first_line(["caddy", "version"]),
        "wrk": first_line(["wrk", "-v"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    rev = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    out["shipyard_git"] = rev.stdout.strip() if rev.returncode == 0 else "no commit"
    for name in SHIPYARD_CONFIGS:
        if name in args.configs:
            command = args.shipyard_commands[name]
            python = (
                Path(command[0]) if name == "shipyard" else args.shipyard_proxy.parent / "python"
            )
            out[f"{name}_python"] = f"{python_facts(python)[2]} ({python.resolve()})"
            out[f"{name}_command"] = shlex.join(command)
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/proxy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all configs")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    p.add_argument(
        "--warmup", type=int, default=2, help="whole seconds of unmeasured wrk before each run"
    )
    p.add_argument("--threads", type=int, default=1, help="wrk -t")
    p.add_argument("--connections", type=int, default=64, help="wrk -c")
    p.add_argument(
        "--configs",
        default=",".join(ALL_CONFIGS),
        help=f"comma-separated subset of {','.join(ALL_CONFIGS)}",
    )
    p.add_argument("--conns", type=int, default=1000, help="client connections for the memory test")
    p.add_argument("--swaps", type=int, default=20, help="target switches per zero-downtime run")
    p.add_argument(
        "--swap-interval", type=float, default=0.5, help="minimum seconds between switches"
    )
    p.add_argument(
        "--stop-delay",
        type=float,
        default=0.3,
        help="in runs (b), seconds between a switch returning and stopping the old upstream",
    )
    p.add_argument("--zd-runs", type=int, default=1, help="repetitions of each zero-downtime run")
    p.add_argument(
        "--zd-methods",
        default=",".join(ZD_METHODS),
        help=f"comma-separated subset of {','.join(ZD_METHODS)}",
    )
    p.add_argument(
        "--skip", default="", help="comma-separated phases to skip: throughput,memory,zero-downtime"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="quick check: 1 round of 2 s, 1 s warm-up, 4 switches, 200 connections",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin wrk to CPU 0 and every server to CPU 1 (default: nothing pinned)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=28100,
        help="upstream port; nginx, haproxy, Caddy use +1..+3, shipyard-proxy +4 (HTTP), +5 "
        "(HTTPS), +6 (metrics), the zero-downtime servers +10..+22. Below the ephemeral "
        "port range, and away from the 18xxx ports the proxy's own tests use",
    )
    p.add_argument(
        "--shipyard-proxy",
        type=Path,
        default=DEFAULT_SHIPYARD,
        help="the venv's shipyard-proxy script: config shipyard-venv runs it, and config "
        "shipyard takes the packages of its venv",
    )
    p.add_argument(
        "--shipyard-python",
        type=Path,
        default=DEFAULT_SHIPYARD_PYTHON,
        help="the interpreter config shipyard runs the proxy on (the one its image ships "
        "with; must match the venv's ABI)",
    )
    p.add_argument(
        "--shipyard-port",
        type=int,
        default=None,
        help="default: base + 4 (shipyard-venv's ports are shipyard's + 3)",
    )
    p.add_argument("--shipyard-https-port", type=int, default=None, help="default: base + 5")
    p.add_argument("--shipyard-metrics-port", type=int, default=None, help="default: base + 6")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write results (default bench/results/proxy-<timestamp>.json)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: print the tables of an earlier bench/results/proxy-*.json",
    )
    p.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, wrk output)"
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=25,
        help="a throughput run during which other processes used more than this %% of the "
        "machine's CPU counts as disturbed and is measured again (see --retries)",
    )
    p.add_argument("--retries", type=int, default=2, help="re-measurements of a disturbed run")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        help="before starting, wait up to this many seconds for other CPU use to drop "
        "below --max-other-load",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the throughput runs, sample shipyard-proxy with py-spy under load",
    )
    p.add_argument("--py-spy", type=Path, default=None, help="py-spy executable for --profile")
    p.add_argument(
        "--py-spy-arg",
        dest="py_spy_args",
        action="append",
        default=[],
        help="extra py-spy record argument, e.g. --py-spy-arg=--native (repeatable)",
    )
    args = p.parse_args(argv)
    args.shipyard_port = args.shipyard_port or args.base_port + 4
    args.shipyard_https_port = args.shipyard_https_port or args.base_port + 5
    args.shipyard_metrics_port = args.shipyard_metrics_port or args.base_port + 6
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 2, 1
        args.swaps, args.conns = 4, 200
    args.configs = [
        c for c in ALL_CONFIGS if c in {x.strip() for x in args.configs.split(",") if x.strip()}
    ]
    args.zd_methods = [m for m in ZD_METHODS if m in args.zd_methods.split(",")]
    unknown = set(args.skip.split(",")) - {"", "throughput", "memory", "zero-downtime"}
    if unknown:
        p.error(f"unknown phase(s) in --skip: {sorted(unknown)}")
    args.skip = set(args.skip.split(",")) - {""}
    if not args.configs:
        p.error(f"--configs must name some of {ALL_CONFIGS}")
    return args


def report(path: Path) -> int:
    """Print the tables and verdicts of an earlier results file."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from exc
    configs = list(results["meta"]["args"]["configs"])
    tp = results.get("throughput")
    if tp and "quiet" not in next(iter(tp.values())):
        add_quiet_stats(tp, float(results["meta"]["args"].get("max_other_load", 25)))
    print(f"{path} (started {results['meta']['started']})\n")
    print(fmt_table(results, configs))
    for line in verdict(results):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    args.shipyard_commands = shipyard_commands(args)
    for name in SHIPYARD_CONFIGS:
        why = name in args.configs and shipyard_usable(args.shipyard_commands[name])
        if why:
            raise BenchError(
                f"{name} is not usable: {why}\n"
                "  (measure the others with --configs direct,nginx,haproxy,caddy)"
            )
    ensure_packages()
    nofile = raise_nofile()
    if nofile < args.conns + 200:
        raise BenchError(
            f"RLIMIT_NOFILE is {nofile}; need at least {args.conns + 200} for --conns {args.conns}"
        )
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="shipyard-bench-proxy-"))
    procs = Processes(pin=args.pin)
    # SIGTERM/SIGHUP unwind through the finally below like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    cpus_servers, cpus_wrk = ({1}, {0}) if args.pin else (None, None)
    bench = Bench(
        args, procs, tmp, cpus_servers, Wrk(args.threads, args.connections, procs, cpus_wrk)
    )
    results = bench.results
    results["meta"] = {
        "started": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "versions": versions(args),
        "args": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency",
    }
    exit_code = 0
    try:
        if args.wait_quiet > 0:
            results["meta"]["other_cpu_pct_at_start"] = wait_for_quiet(
                args.max_other_load, args.wait_quiet
            )
        log(f"temp dir {tmp}")
        bench.start_servers()
        if "memory" not in args.skip:
            bench.measure_idle_memory()
        if "throughput" not in args.skip:
            bench.throughput()
        if args.profile and "shipyard" in args.configs:
            bench.profile(RESULTS_DIR / f"proxy-{stamp}-pyspy.txt")
        if "memory" not in args.skip:
            bench.measure_connections_memory()
        if "zero-downtime" not in args.skip:
            bench.zero_downtime()
    except (BenchError, KeyboardInterrupt, SystemExit) as exc:
        results["error"] = str(exc) or type(exc).__name__
        log(f"aborted: {results['error']}")
        exit_code = 1
    finally:
        procs.stop_all()
        results["meta"]["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        out = args.json or RESULTS_DIR / f"proxy-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(fmt_table(results, args.configs))
    for line in verdict(results):
        print(line)
    if "profile" in results:
        prof = results["profile"]
        print(f"\npy-spy, shipyard-proxy under load ({prof['rps_while_sampled']:,.0f} req/s):")
        print("  own time per line:\n    " + "\n    ".join(prof["own"][:12]))
        print("  inclusive per function:\n    " + "\n    ".join(prof["inclusive"][:12]))
    print(f"\nresults: {out}")
    return exit_code


def run() -> int:
    """Entry point for the bench/proxy launcher."""
    try:
        return main()
    except BenchError as exc:
        print(f"bench/proxy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
