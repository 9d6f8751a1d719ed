#!/usr/bin/env python3
"""Shipyard's multi-host test lab: N throwaway servers h1..hN on this machine.

Each host is a network namespace on the bridge labbr0 (10.210.0.1/24, hN at
10.210.0.(10+N)) with its own mount and UTS namespaces, sshd and dockerd. The root
namespace is the deployer: it runs a dockerd for builds and a registry that hosts
reach at 10.210.0.1:5000 and the deployer at localhost:5555 (same storage).

Standard library only, so it runs with the system python3 before any venv exists.
Used as a CLI (`python3 tests/lab/lab.py up --hosts 3`, see --help) and imported by
tests/integration/conftest.py. tests/lab/README.md explains the design and pitfalls.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
HOST_INIT = HERE / "host-init.sh"
INSTALL_PACKAGES = HERE / "install-packages.sh"

BRIDGE = "labbr0"
NET_PREFIX = "10.210.0"
DEPLOYER_ADDRESS = f"{NET_PREFIX}.1"
REGISTRY_HOST_PORT = 5000  # on DEPLOYER_ADDRESS, for the hosts
REGISTRY_LOCAL_PORT = 5555  # on 127.0.0.1, for the deployer's dockerd (trusts loopback)
DEFAULT_ALLOWED_PORTS = "20000-20999"
MAX_HOSTS = 99
CHAIN_FORWARD = "SHIPYARD-LAB-FWD"
CHAIN_INPUT = "SHIPYARD-LAB-IN"
CHAIN_OUTPUT = "SHIPYARD-LAB-OUT"
# h0 is the seed host that builds the docker data-root template (_docker_template).
HOST_NAME_RE = re.compile(r"^h([0-9]{1,2})$")
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A clean environment for everything we start: a DOCKER_HOST or similar inherited
# from the caller must not point a host's docker CLI at another daemon.
CLEAN_ENV = {"PATH": STD_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
ROOT_DOCKER = ["docker", "-H", "unix:///var/run/docker.sock"]

# Bump when the recipe of a base image changes, so cached tarballs are rebuilt.
IMAGE_RECIPE_VERSION = 1
IMAGE_LABEL = "org.shipyard.lab.source"
BASE_IMAGES = ("busybox", "pybase")  # tag :local everywhere

HOST_START_TIMEOUT = 90.0
# The bridge, addresses and netns names are machine-wide, so there is one lab per
# machine whatever the lab dir: this lock serializes everyone who changes or uses it.
MACHINE_LOCK = Path("/run/shipyard-lab.lock")
# Set (to "1") by a process holding MACHINE_LOCK for a whole session, so that it and
# its children (tests running `lab.py up`) do not wait for themselves.
LOCK_HELD_ENV = "SHIPYARD_LAB_LOCK_HELD"
REQUIRED_TOOLS = (
    "ip",
    "iptables",
    "iptables-restore",
    "nsenter",
    "unshare",
    "setsid",
    "ss",
    "ssh",
    "ssh-keygen",
    "sshd",
    "dockerd",
    "docker",
    "docker-registry",
    "busybox",
    "debootstrap",
)


class LabError(RuntimeError):
    """A lab step failed. The message is one line: what failed and what to do."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 120.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise LabError (one line) if it fails."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env if env is not None else CLEAN_ENV,
            cwd="/",
        )
    except FileNotFoundError:
        raise LabError(f"{args[0]} is not installed: run `bash {INSTALL_PACKAGES}`") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{_short(args)}` did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise LabError(
            f"`{_short(args)}` failed (exit {proc.returncode}): {_last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def _short(argv: Sequence[str], limit: int = 160) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def tail(path: Path, lines: int = 5) -> str:
    try:
        content = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"({path} is missing)"
    return " | ".join(content[-lines:]) or f"({path} is empty)"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def proc_comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """True if pid runs. A zombie counts as dead: it only waits for its parent."""
    if pid is None or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may
    # itself contain spaces or parentheses.
    return stat[stat.rindex(")") + 2 : stat.rindex(")") + 3] not in ("Z", "X")


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def spawn_detached(argv: Sequence[str], log_path: Path, pid_path: Path) -> int:
    """Start a long-running process in its own session, detached from us.

    `setsid -f` forks, so the process is re-parented to init and outlives this
    Python process (the CLI exits after `up`; pytest holds no Popen to reap). The
    wrapper shell writes its pid and then execs argv, so the pid is argv's own.
    """
    pid_path.unlink(missing_ok=True)
    with log_path.open("ab") as logf:
        subprocess.run(
            ["setsid", "-f", "bash", "-c", 'echo $$ >"$0"; exec "$@"', str(pid_path), *argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            env=CLEAN_ENV,
            cwd="/",
            check=True,
        )
    wait_for(lambda: read_pid(pid_path) is not None, 10, f"{argv[0]} to start")
    pid = read_pid(pid_path)
    assert pid is not None
    return pid


def stop_process(pid: int | None, comm: str, timeout: float) -> None:
    """SIGTERM pid (only if it still is `comm`), then SIGKILL it and its children."""
    if not pid_alive(pid) or proc_comm(pid or 0) != comm:
        return
    assert pid is not None
    children = _descendants(pid)
    kill_pids([pid], signal.SIGTERM)
    with contextlib.suppress(LabError):
        wait_for(lambda: not pid_alive(pid), timeout, f"{comm} (pid {pid}) to exit", interval=0.05)
        return
    kill_pids([pid, *children])


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, ppid in parents.items() if ppid == current]
        found += kids
        frontier += kids
    return found


def netns_pids(name: str) -> set[int]:
    """Pids of every process in network namespace `name` (like `ip netns pids`)."""
    try:
        target = os.stat(f"/run/netns/{name}")
    except OSError:
        return set()
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.add(int(entry.name))
    return pids


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """(fstype, options, mount point) of the cgroup tree, in mount order."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _source, target, fstype, options, *_ = line.split()
        if target.startswith("/sys/fs/cgroup") and fstype in ("tmpfs", "cgroup", "cgroup2"):
            if fstype == "tmpfs":
                # systemd mounts this tmpfs read-only, which would stop us creating
                # the mount points under it.
                options = ",".join("rw" if o == "ro" else o for o in options.split(","))
            mounts.append((fstype, options, target))
    return mounts


def host_cgroup_dirs(name: str) -> list[Path]:
    """The cgroup-parent directory of host `name` in every cgroup hierarchy."""
    return [
        Path(target) / f"lab-{name}"
        for fstype, _options, target in cgroup_mounts()
        if fstype != "tmpfs" and (Path(target) / f"lab-{name}").is_dir()
    ]


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for top in host_cgroup_dirs(name):
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError, ValueError):
                text = (Path(dirpath) / "cgroup.procs").read_text()
                pids.update(int(p) for p in text.split())
    return pids


def remove_cgroups(name: str) -> None:
    for top in host_cgroup_dirs(name):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


T = TypeVar("T")


def parallel(fn: Callable[[T], Any], items: Sequence[T]) -> None:
    """Run fn over items in threads; raise the first failure after all finished."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(fn, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_holders(path: Path) -> list[str]:
    """'pid (command)' of the processes holding a flock on path, from /proc/locks."""
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{fields[4]}/cmdline").read_bytes().replace(b"\0", b" ")
                holders.append(f"{fields[4]} ({command.decode(errors='replace').strip()[:80]})")
    return holders


class MachineLock:
    """The machine-wide lab lock, held by whoever changes or uses the lab: `up`,
    `down`, and a test session for its whole run (tests stop sshds, block ports and
    restart the lab, so two sessions cannot share it). Waits, saying who holds it,
    for up to $SHIPYARD_LAB_WAIT seconds (default 1800)."""

    def __init__(self) -> None:
        self._handle: Any = None

    def acquire(self) -> None:
        MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._handle = MACHINE_LOCK.open("a")
        patience = float(os.environ.get("SHIPYARD_LAB_WAIT", "1800"))
        deadline, told = time.monotonic() + patience, False
        while True:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holders = ", ".join(_lock_holders(MACHINE_LOCK)) or "another process"
                if time.monotonic() > deadline:
                    self.release()
                    raise LabError(
                        f"the lab has been in use by {holders} for {patience:.0f}s: "
                        "wait for it to finish or stop it"
                    ) from None
                if not told:
                    log(f"waiting for the lab, in use by {holders}")
                    told = True
                time.sleep(0.5)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the last descriptor drops the flock
            self._handle = None

    def __enter__(self) -> MachineLock:
        if os.environ.get(LOCK_HELD_ENV) != "1":
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def parse_ports(spec: str) -> list[tuple[int, int]]:
    """'20000-20999,8080' -> [(20000, 20999), (8080, 8080)]."""
    ranges = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.replace(":", "-").partition("-")
        try:
            lo, hi = int(low), int(high or low)
        except ValueError:
            raise LabError(f"bad port allow-list {spec!r}: use e.g. '20000-20999,8080'") from None
        if not 0 < lo <= hi < 65536:
            raise LabError(f"bad port range {part!r} in {spec!r}")
        ranges.append((lo, hi))
    return ranges


# --------------------------------------------------------------------------- hosts


@dataclass(frozen=True)
class Host:
    """One lab server. `address`, `user`, `key_path`, `known_hosts` and `ssh_config`
    are what an SSH client needs; `run` reaches the host without SSH."""

    name: str
    index: int
    address: str
    user: str
    key_path: Path
    known_hosts: Path
    ssh_config: Path
    dir: Path
    log_dir: Path

    @property
    def sshd_config(self) -> Path:
        return self.dir / "ssh" / "sshd_config"

    @property
    def init_pid(self) -> int:
        pid = read_pid(self.dir / "pids" / "init.pid")
        if not pid_alive(pid):
            raise LabError(
                f"{self.name} is not running (no live host-init; see "
                f"{self.log_dir}/{self.name}-init.log): bring the lab up again"
            )
        assert pid is not None
        return pid

    def nsenter_argv(self, command: str | Sequence[str]) -> list[str]:
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        return ["nsenter", "-t", str(self.init_pid), "-m", "-n", "-u", "--", *argv]

    def run(
        self,
        command: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its namespaces) without SSH.

        A string runs through `sh -c`; a list runs as is. Output is captured as text.
        """
        return run(self.nsenter_argv(command), check=check, input=input, timeout=timeout)

    def docker(self, *args: str, check: bool = True, timeout: float | None = 120.0) -> str:
        """Run the docker CLI against this host's own dockerd; return stdout."""
        return self.run(["docker", *args], check=check, timeout=timeout).stdout

    def ssh_argv(self, command: str | Sequence[str], *ssh_options: str) -> list[str]:
        """argv for the system ssh client. A list is quoted with shlex.join because
        the remote shell splits the command line again."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return ["ssh", "-F", str(self.ssh_config), *ssh_options, self.name, remote]

    def ssh(
        self, command: str | Sequence[str], *, check: bool = True, timeout: float | None = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return run(self.ssh_argv(command), check=check, timeout=timeout, env=dict(os.environ))

    # sshd: tests need "a stopped host" that refuses connections.

    def sshd_pids(self) -> set[int]:
        return {pid for pid in netns_pids(self.name) if proc_comm(pid) == "sshd"}

    def sshd_running(self) -> bool:
        pid = read_pid(self.dir / "pids" / "sshd.pid")
        return pid_alive(pid) and proc_comm(pid or 0) == "sshd"

    def stop_sshd(self, *, kill_sessions: bool = True) -> None:
        """Stop the host's sshd, so new connections are refused. With kill_sessions
        (the default) open SSH sessions die too, as if the server went away."""
        pids = (
            self.sshd_pids() if kill_sessions else {read_pid(self.dir / "pids" / "sshd.pid") or 0}
        )
        kill_pids(p for p in pids if p)
        wait_for(
            lambda: not any(pid_alive(p) for p in pids if p), 10, f"{self.name}'s sshd to stop"
        )

    def sshd_listening(self) -> bool:
        out = self.run(["ss", "-Hltn", "sport", "=", ":22"], check=False).stdout
        return bool(out.strip())

    def start_sshd(self) -> None:
        """Start sshd and return once it accepts connections: sshd forks into the
        background before it binds its socket, so its zero exit is not enough."""
        if not self.sshd_running():
            log_file = self.log_dir / f"{self.name}-sshd.log"
            self.run(["/usr/sbin/sshd", "-f", str(self.sshd_config), "-E", str(log_file)])
        wait_for(self.sshd_listening, 10, f"{self.name}'s sshd to listen", interval=0.05)

    @contextlib.contextmanager
    def sshd_stopped(self) -> Iterator[Host]:
        self.stop_sshd()
        try:
            yield self
        finally:
            self.start_sshd()


# --------------------------------------------------------------------------- the lab


class Lab:
    """The whole lab: hosts, registry, firewall. Methods that change the lab must
    run as root."""

    deployer_address = DEPLOYER_ADDRESS
    registry_for_hosts = f"{DEPLOYER_ADDRESS}:{REGISTRY_HOST_PORT}"
    registry_for_deployer = f"localhost:{REGISTRY_LOCAL_PORT}"
    bridge = BRIDGE

    def __init__(
        self,
        lab_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        allowed_ports: str | None = None,
    ) -> None:
        self.dir = Path(lab_dir or os.environ.get("SHIPYARD_LAB_DIR") or REPO_ROOT / ".lab")
        self.dir = self.dir.resolve()
        self.cache_dir = Path(
            cache_dir or os.environ.get("SHIPYARD_LAB_CACHE") or "/var/cache/shipyard-lab"
        )
        self.allowed_ports_spec = (
            allowed_ports or os.environ.get("SHIPYARD_LAB_ALLOW_PORTS") or DEFAULT_ALLOWED_PORTS
        )
        self.allowed_ports = parse_ports(self.allowed_ports_spec)
        self.hosts: list[Host] = []
        self.storage_driver = ""

    # paths ---------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def key_path(self) -> Path:
        return self.dir / "keys" / "id_ed25519"

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def _pids(self) -> Path:
        return self.dir / "pids"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host named {name!r}; the lab has {[h.name for h in self.hosts]}")

    def _make_host(self, index: int) -> Host:
        return Host(
            name=f"h{index}",
            index=index,
            address=f"{NET_PREFIX}.{10 + index}",
            user="root",
            key_path=self.key_path,
            known_hosts=self.known_hosts,
            ssh_config=self.ssh_config,
            dir=self.dir / "hosts" / f"h{index}",
            log_dir=self.log_dir,
        )

    # up ------------------------------------------------------------------------

    def up(self, count: int, *, images: bool = True, keep_on_failure: bool = False) -> list[Host]:
        """Bring up hosts h1..h<count> from whatever state the machine is in."""
        if not 1 <= count <= MAX_HOSTS:
            raise LabError(f"host count must be 1..{MAX_HOSTS}, got {count}")
        self._preflight()
        started = time.monotonic()
        with MachineLock():
            # A previous run may have crashed: kill its processes, remove its netns,
            # veths, bridge and firewall chains. The root dockerd stays.
            self._teardown(stop_root_docker=False, wait_reaped=False)
            try:
                self._up(count, images)
            except BaseException:
                if not keep_on_failure:
                    log(f"up failed; tearing down (logs stay in {self.log_dir})")
                    with contextlib.suppress(Exception):
                        self._teardown(stop_root_docker=False)
                raise
        self._print_summary(time.monotonic() - started)
        return self.hosts

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError(
                "the lab needs root (network namespaces, iptables, mounts): rerun as root"
            )
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=STD_PATH) is None]
        if missing:
            log(f"missing {', '.join(missing)}; running {INSTALL_PACKAGES.name}")
            result = subprocess.run(["bash", str(INSTALL_PACKAGES)], env=CLEAN_ENV, check=False)
            if result.returncode != 0:
                raise LabError(f"installing the lab packages failed: run `bash {INSTALL_PACKAGES}`")

    def _up(self, count: int, images: bool) -> None:
        for sub in ("logs", "pids", "keys", "hosts", "registry"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # Logs describe the current lab only; the root dockerd may still write to its own.
        for old in self.log_dir.glob("h*.log"):
            old.unlink()
        hosts = [self._make_host(i) for i in range(1, count + 1)]
        # Written first, so a `down` after a crash in the middle knows what to remove.
        self._write_state(hosts)
        self._ensure_root_dockerd()
        self._network_up()
        self._firewall_up()
        self._ensure_keys(hosts)
        self._write_ssh_client_files(hosts)
        self._start_registries()
        self.storage_driver = self._pick_storage_driver()
        (self.dir / "cgroup-mounts").write_text(
            "".join(f"{fstype} {options} {target}\n" for fstype, options, target in cgroup_mounts())
        )
        template = None
        if images:
            self._prepare_base_images()
            template = self._docker_template()
        t0 = time.monotonic()
        parallel(lambda h: self._start_host(h, hosts, template), hosts)
        log(f"{count} host(s) ready in {time.monotonic() - t0:.1f}s")
        self.hosts = hosts
        self._write_state(hosts, complete=True)

    def _write_state(self, hosts: list[Host], *, complete: bool = False) -> None:
        state = {
            "hosts": [h.name for h in hosts],
            "complete": complete,
            "allowed_ports": self.allowed_ports_spec,
            "storage_driver": self.storage_driver,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def attach(self, min_hosts: int = 1) -> list[Host]:
        """Use a lab that is already up (SHIPYARD_LAB_EXTERNAL=1); don't change it."""
        state = self._read_state()
        if not state.get("complete"):
            raise LabError(f"no lab is up in {self.dir}: run `make lab-up N={max(min_hosts, 3)}`")
        hosts = [self._make_host(int(name[1:])) for name in state["hosts"]]
        if len(hosts) < min_hosts:
            raise LabError(
                f"the running lab has {len(hosts)} host(s), {min_hosts} needed: "
                f"run `make lab-up N={min_hosts}`"
            )
        for h in hosts:
            _ = h.init_pid  # raises if the host died
        self.allowed_ports_spec = state.get("allowed_ports", self.allowed_ports_spec)
        self.allowed_ports = parse_ports(self.allowed_ports_spec)
        self.storage_driver = state.get("storage_driver", "")
        self.hosts = hosts
        return hosts

    # root namespace: dockerd, bridge, firewall, registry ---------------------

    def _root_docker_ok(self) -> bool:
        version = [*ROOT_DOCKER, "version", "-f", "{{.Server.Version}}"]
        return run(version, check=False, timeout=20).returncode == 0

    def _ensure_root_dockerd(self) -> None:
        if self._root_docker_ok():
            return
        other = read_pid(Path("/var/run/docker.pid"))
        if pid_alive(other) and proc_comm(other or 0) == "dockerd":
            log(f"waiting for the running root dockerd (pid {other})")
        else:
            logfile = self.log_dir / "root-dockerd.log"
            pid = spawn_detached(["dockerd"], logfile, self._pids / "root-dockerd.pid")
            log(f"started the root dockerd (pid {pid}, log {logfile})")
        wait_for(
            self._root_docker_ok,
            60,
            "the root dockerd to answer (see logs/root-dockerd.log)",
            interval=0.2,
        )

    def _network_up(self) -> None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "replace", f"{DEPLOYER_ADDRESS}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # No IPv6 on the deployer side of the lab: nothing can be routed out over v6.
        _sysctl(f"net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")

    def _firewall_up(self) -> None:
        accept_ports = "".join(
            f"-A {CHAIN_INPUT} -d {DEPLOYER_ADDRESS} -p tcp --dport {lo}:{hi} -j ACCEPT\n"
            for lo, hi in [(REGISTRY_HOST_PORT, REGISTRY_HOST_PORT), *self.allowed_ports]
        )
        # --noflush keeps everyone else's rules; declaring our chains flushes them.
        rules = (
            "*filter\n"
            f":{CHAIN_FORWARD} - [0:0]\n:{CHAIN_INPUT} - [0:0]\n:{CHAIN_OUTPUT} - [0:0]\n"
            # Host to host over the bridge (br_netfilter sends bridged frames through
            # FORWARD, whose policy dockerd sets to DROP).
            f"-A {CHAIN_FORWARD} -o {BRIDGE} -j ACCEPT\n"
            f"-A {CHAIN_FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
            # Anything else from the lab would leave the machine: refuse it at once so
            # a stray pull or lookup fails fast instead of hanging.
            f"-A {CHAIN_FORWARD} -p tcp -j REJECT --reject-with tcp-reset\n"
            f"-A {CHAIN_FORWARD} -j REJECT --reject-with icmp-admin-prohibited\n"
            f"-A {CHAIN_INPUT} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
            f"-A {CHAIN_INPUT} -p icmp -j ACCEPT\n"
            f"{accept_ports}"
            f"-A {CHAIN_INPUT} -p tcp -j REJECT --reject-with tcp-reset\n"
            f"-A {CHAIN_INPUT} -j REJECT --reject-with icmp-port-unreachable\n"
            "COMMIT\n"
        )
        run(["iptables-restore", "-w", "--noflush"], input=rules)
        for chain, rule in self._firewall_jumps():
            while run(["iptables", "-w", "-C", chain, *rule], check=False).returncode == 0:
                run(["iptables", "-w", "-D", chain, *rule])
            # First in the chain, ahead of dockerd's own FORWARD rules.
            run(["iptables", "-w", "-I", chain, "1", *rule])

    @staticmethod
    def _firewall_jumps() -> list[tuple[str, list[str]]]:
        return [
            ("FORWARD", ["-i", BRIDGE, "-j", CHAIN_FORWARD]),
            ("INPUT", ["-i", BRIDGE, "-j", CHAIN_INPUT]),
            ("OUTPUT", ["-o", BRIDGE, "-j", CHAIN_OUTPUT]),
        ]

    def _firewall_down(self) -> None:
        for chain, rule in self._firewall_jumps():
            while run(["iptables", "-w", "-C", chain, *rule], check=False).returncode == 0:
                run(["iptables", "-w", "-D", chain, *rule])
        for chain in (CHAIN_FORWARD, CHAIN_INPUT, CHAIN_OUTPUT):
            if run(["iptables", "-w", "-F", chain], check=False).returncode == 0:
                run(["iptables", "-w", "-X", chain])

    def _ensure_keys(self, hosts: list[Host]) -> None:
        # Kept across runs, so known_hosts entries stay valid for a person too.
        keys = [(self.key_path, "shipyard-lab deployer")] + [
            (self.dir / "keys" / f"{h.name}_host_ed25519_key", f"shipyard-lab {h.name}")
            for h in hosts
        ]
        for path, comment in keys:
            if not path.exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])

    def _write_ssh_client_files(self, hosts: list[Host]) -> None:
        known = []
        for h in hosts:
            key = (self.dir / "keys" / f"{h.name}_host_ed25519_key.pub").read_text().split()
            known.append(f"{h.name},{h.address} {key[0]} {key[1]}\n")
        self.known_hosts.write_text("".join(known))
        names = " ".join([h.name for h in hosts] + [h.address for h in hosts])
        config = [f"# Generated by {Path(__file__).name}: ssh -F {self.ssh_config} h1\n"]
        config += [f"Host {h.name}\n    HostName {h.address}\n" for h in hosts]
        config.append(
            f"Host {names}\n"
            "    User root\n"
            f"    IdentityFile {self.key_path}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            # Half the connect time of the default post-quantum sntrup761 exchange.
            "    KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n"
            "    ConnectTimeout 5\n"
            "    LogLevel ERROR\n"
        )
        self.ssh_config.write_text("".join(config))

    def _registry_endpoints(self) -> list[tuple[str, str, int]]:
        return [
            ("lab", DEPLOYER_ADDRESS, REGISTRY_HOST_PORT),
            ("local", "127.0.0.1", REGISTRY_LOCAL_PORT),
        ]

    def _start_registries(self) -> None:
        # Two registries on one storage: hosts reach 10.210.0.1:5000 (listed in their
        # insecure-registries), the deployer's dockerd pushes to a loopback address,
        # which it trusts without configuration. Same repositories, same digests.
        secret_file = self.dir / "registry" / ".http-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(16))
        for name, address, port in self._registry_endpoints():
            config = self.dir / f"registry-{name}.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n  formatter: text\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.dir / 'registry'}\n"
                "  delete:\n    enabled: true\n"
                # The other instance may be mid-upload on the same storage.
                "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                "http:\n"
                f"  addr: {address}:{port}\n"
                f"  secret: {secret_file.read_text().strip()}\n"
                "health:\n  storagedriver:\n    enabled: false\n"
            )
            spawn_detached(
                ["docker-registry", "serve", str(config)],
                self.log_dir / f"registry-{name}.log",
                self._pids / f"registry-{name}.pid",
            )
        for name, address, port in self._registry_endpoints():
            pid = read_pid(self._pids / f"registry-{name}.pid")

            logfile = self.log_dir / f"registry-{name}.log"

            def ready(
                address: str = address,
                port: int = port,
                pid: int | None = pid,
                logfile: Path = logfile,
            ) -> bool:
                if not pid_alive(pid):
                    raise LabError(f"the registry on {address}:{port} exited: {tail(logfile, 2)}")
                return _http_ok(f"http://{address}:{port}/v2/")

            wait_for(ready, 15, f"the registry on {address}:{port}", interval=0.05)

    def _stop_registries(self) -> list[int]:
        pids = {
            read_pid(self._pids / f"registry-{name}.pid")
            for name, _, _ in self._registry_endpoints()
        }
        # After a crash the pid files may be gone or stale: also look for a
        # docker-registry still listening on our addresses.
        for _, address, port in self._registry_endpoints():
            pids |= _listener_pids(address, port)
        for pid in pids:
            stop_process(pid, "docker-registry", 5)
        for name, _, _ in self._registry_endpoints():
            (self._pids / f"registry-{name}.pid").unlink(missing_ok=True)
        for _, address, port in self._registry_endpoints():
            busy = _listener_pids(address, port, any_process=True)
            if busy:
                raise LabError(
                    f"{address}:{port} is in use by pid(s) {sorted(busy)} "
                    f"({', '.join(sorted({proc_comm(p) or '?' for p in busy}))}), not a lab "
                    f"registry: stop that process, then retry"
                )
        return [p for p in pids if p]

    def _pick_storage_driver(self) -> str:
        """overlay2 if overlayfs can be mounted on the hosts' filesystem, else vfs.

        overlay2 needs a real filesystem under the data root (ext4 or xfs). If the
        lab dir sits on overlayfs itself (a container) or tmpfs without user xattrs,
        the mount fails and dockerd would refuse to start; vfs works everywhere but
        copies every layer, so images take far more disk and time.
        """
        probe = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=self.dir / "hosts"))
        try:
            for sub in ("lower", "upper", "work", "merged"):
                (probe / sub).mkdir()
            options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
            mount = ["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")]
            private = ["unshare", "--mount", "--propagation", "private"]
            ok = run([*private, *mount], check=False).returncode == 0
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        if not ok:
            log(f"overlayfs does not mount under {self.dir}; hosts use the slow vfs storage driver")
        return "overlay2" if ok else "vfs"

    # one host ------------------------------------------------------------------

    def _start_host(self, h: Host, hosts: list[Host], template: Path | None) -> None:
        veth = f"lab-{h.name}"
        run(["ip", "netns", "add", h.name])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.name])
        run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        _sysctl(f"net/ipv6/conf/{veth}/disable_ipv6", "1")
        run(
            ["ip", "-n", h.name, "-batch", "-"],
            input=(
                f"addr add {h.address}/24 dev eth0\n"
                "link set eth0 up\n"
                "link set lo up\n"
                f"route add default via {DEPLOYER_ADDRESS}\n"
            ),
        )
        self._write_host_files(h, hosts)
        if template is not None:
            self._copy_template(template, h.dir / "docker")
        # `ip netns exec` puts it in the netns (and remounts /sys for it); unshare
        # gives it mount and UTS namespaces that never propagate back to ours.
        enter = ["ip", "netns", "exec", h.name, "unshare", "--mount", "--uts"]
        init_args = [h.name, str(h.dir), str(self.log_dir), str(self.dir / "cgroup-mounts")]
        spawn_detached(
            [*enter, "--propagation", "private", "--", "bash", str(HOST_INIT), *init_args],
            self.log_dir / f"{h.name}-init.log",
            h.dir / "pids" / "init.pid",
        )

        def ready() -> bool:
            if (h.dir / "ready").exists():
                return True
            if not pid_alive(read_pid(h.dir / "pids" / "init.pid")):
                raise LabError(
                    f"{h.name} failed to start: {tail(self.log_dir / f'{h.name}-init.log', 3)} "
                    f"(more in {self.log_dir}/{h.name}-*.log)"
                )
            return False

        wait_for(
            ready, HOST_START_TIMEOUT, f"{h.name} to start (see {self.log_dir}/{h.name}-*.log)"
        )

    def _write_host_files(self, h: Host, hosts: list[Host]) -> None:
        d = h.dir
        for sub, mode in (
            ("root", 0o700),
            ("root/.ssh", 0o700),
            ("docker", 0o711),
            ("tmp", 0o1777),
            ("etc-docker", 0o755),
            ("etc", 0o755),
            ("ssh", 0o755),
            ("pids", 0o755),
        ):
            (d / sub).mkdir(parents=True, exist_ok=True)
            (d / sub).chmod(mode)
        authorized = d / "root" / ".ssh" / "authorized_keys"
        authorized.write_text(self.key_path.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        (d / "etc" / "hostname").write_text(f"{h.name}\n")
        (d / "etc" / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{DEPLOYER_ADDRESS}\tdeployer\n"
            + "".join(f"{other.address}\t{other.name}\n" for other in hosts)
        )
        # A lab address, not 127.x: dockerd would hand containers 8.8.8.8 instead. The
        # firewall rejects port 53 there, so lookups fail at once instead of hanging.
        (d / "etc" / "resolv.conf").write_text(
            f"nameserver {DEPLOYER_ADDRESS}\noptions timeout:1 attempts:1\n"
        )
        daemon = {
            "data-root": "/var/lib/docker",
            "exec-root": "/run/docker",
            "pidfile": "/run/docker.pid",
            "hosts": ["unix:///run/docker.sock"],
            "insecure-registries": [self.registry_for_hosts],
            # Its own container bridge per host, clear of the lab net and of the
            # pools dockerd takes user networks (Kamal's "kamal") from.
            "bip": f"10.211.{h.index}.1/24",
            # Teardown finds every container process under /lab-hN.
            "cgroup-parent": f"/lab-{h.name}",
            "storage-driver": self.storage_driver,
            "shutdown-timeout": 1,
            "log-driver": "json-file",
            "log-opts": {"max-size": "10m", "max-file": "2"},
            "features": {"buildkit": False},
        }
        (d / "etc-docker" / "daemon.json").write_text(json.dumps(daemon, indent=2) + "\n")
        host_key = self.dir / "keys" / f"{h.name}_host_ed25519_key"
        (d / "ssh" / "sshd_config").write_text(
            f"# sshd of lab host {h.name}, generated by {Path(__file__).name}\n"
            "Port 22\n"
            f"HostKey {host_key}\n"
            f"PidFile {d / 'pids' / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "AllowTcpForwarding yes\n"
            "AllowStreamLocalForwarding yes\n"
            # Tools open many sessions and connections at once.
            "MaxSessions 100\n"
            "MaxStartups 100:30:200\n"
            "AcceptEnv LANG LC_*\n"
            "Subsystem sftp internal-sftp\n"
        )

    def _docker_template(self) -> Path:
        """A dockerd data root that already holds the base images, pulled from the
        lab registry, cached under the cache dir.

        Pulling pybase on every host at every `up` took 5-8 s (gunzip and extract
        116 MB per host on two cores). Each host instead starts from a copy of this
        template: the small metadata (image/) is copied, the layer files are
        hard-linked, which is safe because image layers are never written after
        extraction (containers write to their own upper dirs, `docker rmi` only
        unlinks). The template comes from a seed host (h0) that pulled the images
        from 10.210.0.1:5000, so every host also knows those registry blobs and
        skips them when pulling app images built FROM them.
        """
        image_ids = [
            run([*ROOT_DOCKER, "image", "inspect", "-f", "{{.Id}}", f"{name}:local"]).stdout.strip()
            for name in BASE_IMAGES
        ]
        dockerd_version = run(["dockerd", "--version"]).stdout.strip()
        key = _digest(
            "\n".join([*image_ids, dockerd_version, self.storage_driver, self.registry_for_hosts])
        )
        template = self.cache_dir / f"docker-template-{key[:16]}"
        with file_lock(self.cache_dir / ".lock"):
            if template.exists():
                return template
            self._clean_cache_leftovers()
            t0 = time.monotonic()
            seed = self._make_host(0)
            self._ensure_keys([seed])
            try:
                self._start_host(seed, [seed], None)
                self._pull_base_images(seed)
                # A clean stop, so dockerd's metadata databases are consistent on disk.
                stop_process(read_pid(seed.dir / "pids" / "dockerd.pid"), "dockerd", 30)
                partial = Path(tempfile.mkdtemp(prefix=".template-", dir=self.cache_dir))
                for sub in ("image", self.storage_driver):
                    run(["cp", "-a", seed.dir / "docker" / sub, partial / sub], timeout=600)
                partial.rename(template)
            finally:
                self._teardown_host(seed.name)
            for old in self.cache_dir.glob("docker-template-*"):
                if old != template:
                    shutil.rmtree(old, ignore_errors=True)
            log(f"built the hosts' docker template in {time.monotonic() - t0:.1f}s")
        return template

    def _clean_cache_leftovers(self) -> None:
        """Remove what a build killed midway left in the cache (caller holds its lock)."""
        for pattern in ("tmp*", ".template-*", "*.partial"):
            for path in self.cache_dir.glob(pattern):
                _remove(path)

    def _copy_template(self, template: Path, data_root: Path) -> None:
        run(["cp", "-a", template / "image", data_root / "image"])
        layers = template / self.storage_driver
        same_fs = os.stat(template).st_dev == os.stat(data_root).st_dev
        # Hard links need one filesystem; a cache dir elsewhere costs a full copy.
        mode = "-al" if same_fs else "-a"
        run(["cp", mode, layers, data_root / self.storage_driver], timeout=600)

    def _pull_base_images(self, h: Host) -> None:
        # Pulling (not `docker load`) records which registry blobs the host already
        # has, so an app image built FROM pybase:local later only fetches its own
        # layers.
        script = " && ".join(
            f"docker pull -q {self.registry_for_hosts}/{name}:local >/dev/null && "
            f"docker tag {self.registry_for_hosts}/{name}:local {name}:local"
            for name in BASE_IMAGES
        )
        h.run(script, timeout=300)

    # base images ---------------------------------------------------------------

    def _prepare_base_images(self, *, push: bool = True) -> None:
        """Build (or take from the cache) busybox:local and pybase:local, import
        them into the root dockerd and push them to the lab registry."""
        t0 = time.monotonic()
        with file_lock(self.cache_dir / ".lock"):
            self._clean_cache_leftovers()
            tarballs = {"busybox": self._busybox_tarball(), "pybase": self._pybase_tarball()}
        for name, (tarball, key, changes) in tarballs.items():
            image = f"{name}:local"
            label = f'{{{{index .Config.Labels "{IMAGE_LABEL}"}}}}'
            inspect = [*ROOT_DOCKER, "image", "inspect", "-f", label, image]
            current = run(inspect, check=False).stdout.strip()
            if current != key:
                argv = [*ROOT_DOCKER, "import"]
                for change in [*changes, f"LABEL {IMAGE_LABEL}={key}"]:
                    argv += ["-c", change]
                run([*argv, tarball, image], timeout=600)
                log(f"imported {image} from {tarball}")
            if push:
                self._push(image)
        log(f"base images ready in {time.monotonic() - t0:.1f}s")

    def _push(self, image: str) -> None:
        name, _, tag = image.partition(":")
        image_id = run([*ROOT_DOCKER, "image", "inspect", "-f", "{{.Id}}", image]).stdout.strip()
        target = f"{self.registry_for_deployer}/{image}"
        run([*ROOT_DOCKER, "tag", image, target])
        manifest = _http_json(
            f"http://127.0.0.1:{REGISTRY_LOCAL_PORT}/v2/{name}/manifests/{tag}",
            accept="application/vnd.docker.distribution.manifest.v2+json",
        )
        if (manifest or {}).get("config", {}).get("digest") == image_id:
            return
        run([*ROOT_DOCKER, "push", target], timeout=600)
        log(f"pushed {target}")

    def _busybox_tarball(self) -> tuple[Path, str, list[str]]:
        busybox = Path(shutil.which("busybox", path=STD_PATH) or "/bin/busybox")
        key = f"busybox-{_file_digest(busybox)[:12]}-v{IMAGE_RECIPE_VERSION}"
        tarball = self.cache_dir / f"{key}.tar"
        changes = [f"ENV PATH={STD_PATH}", 'CMD ["sh"]']
        if tarball.exists():
            return tarball, key, changes
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            root = Path(tmp) / "rootfs"
            for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var/www"):
                (root / sub).mkdir(parents=True)
            (root / "tmp").chmod(0o1777)
            shutil.copy2(busybox, root / "bin" / "busybox")
            applets = run([str(busybox), "--list-full"]).stdout.split()
            for applet in applets:
                link = root / applet
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to("/bin/busybox")
            (root / "etc" / "passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
            )
            (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            self._tar(root, tarball)
        log(f"built {tarball.name}")
        return tarball, key, changes

    def _pybase_tarball(self) -> tuple[Path, str, list[str]]:
        suite = _os_release().get("VERSION_CODENAME") or "bookworm"
        key = f"pybase-{suite}-v{IMAGE_RECIPE_VERSION}"
        tarball = self.cache_dir / f"{key}.tar"
        changes = [f"ENV PATH={STD_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]']
        if tarball.exists():
            return tarball, key, changes
        mirror = apt_mirror(suite)
        logfile = self.log_dir / "debootstrap.log"
        log(f"building {key} with debootstrap from {mirror} (about a minute, once; log {logfile})")
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            root = Path(tmp) / "rootfs"
            with logfile.open("w") as out:
                argv = ["debootstrap", "--variant=minbase", "--include=python3", suite, str(root)]
                result = subprocess.run(
                    [*argv, mirror],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=CLEAN_ENV,
                    timeout=1800,
                    check=False,
                )
            if result.returncode != 0:
                raise LabError(
                    f"debootstrap of {suite} from {mirror} failed: {tail(logfile, 2)}; "
                    "check that the mirror is reachable (apt-get update)"
                )
            # Apt caches, docs, man pages and locales are a third of the image and no
            # test needs them.
            for pattern in (
                "var/cache/apt/*",
                "var/lib/apt/lists/*",
                "usr/share/doc/*",
                "usr/share/man/*",
                "usr/share/info/*",
                "usr/share/locale/*",
                "var/log/*",
                "var/cache/debconf/*-old",
            ):
                for path in root.glob(pattern):
                    _remove(path)
            self._tar(root, tarball)
        log(f"built {tarball.name} ({tarball.stat().st_size // 2**20} MiB)")
        return tarball, key, changes

    @staticmethod
    def _tar(root: Path, tarball: Path) -> None:
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", root, "-cf", partial, "."], timeout=600)
        partial.replace(tarball)  # atomic: a crash never leaves a half tarball cached

    # down ----------------------------------------------------------------------

    def down(self, *, stop_root_docker: bool = True, purge: bool = False) -> None:
        """Stop everything the lab started; with purge, delete its state too."""
        self._preflight_root_only()
        started = time.monotonic()
        with MachineLock():
            self._teardown(stop_root_docker=stop_root_docker)
            if purge:
                for entry in self.dir.iterdir():
                    _remove(entry)
        self.hosts = []
        log(f"down in {time.monotonic() - started:.1f}s")

    def _preflight_root_only(self) -> None:
        if os.geteuid() != 0:
            raise LabError(
                "the lab needs root (network namespaces, iptables, mounts): rerun as root"
            )

    def _known_host_names(self) -> list[str]:
        names = set(self._read_state().get("hosts", []))
        with contextlib.suppress(OSError):
            names |= {p.name for p in Path("/run/netns").iterdir()}
        with contextlib.suppress(OSError):
            names |= {p.name for p in (self.dir / "hosts").iterdir()}
        with contextlib.suppress(OSError):
            names |= {n.removeprefix("lab-") for n in os.listdir("/sys/class/net")}
        return sorted((n for n in names if HOST_NAME_RE.match(n)), key=lambda n: int(n[1:]))

    def _teardown(self, *, stop_root_docker: bool, wait_reaped: bool = True) -> None:
        names = self._known_host_names()
        killed: list[int] = []
        parallel(lambda name: killed.extend(self._teardown_host(name)), names)
        killed += self._stop_registries()
        self._firewall_down()
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            run(["ip", "link", "del", BRIDGE])
        for path in (self.state_file, self.dir / "cgroup-mounts"):
            path.unlink(missing_ok=True)
        if stop_root_docker:
            pid_file = self._pids / "root-dockerd.pid"
            root_pid = read_pid(pid_file)
            if root_pid and proc_comm(root_pid) == "dockerd":
                killed += [root_pid, *_descendants(root_pid)]
            stop_process(root_pid, "dockerd", 30)
            pid_file.unlink(missing_ok=True)
        # Killed processes were re-parented to this machine's init, which reaps
        # about once a second; until then `pgrep` lists them as <defunct>. Waiting
        # here makes "nothing left" checkable.
        with contextlib.suppress(LabError):
            wait_for(
                lambda: not wait_reaped or not any(Path(f"/proc/{p}").exists() for p in killed),
                3,
                "killed processes to be reaped",
                interval=0.05,
            )
        leftovers = [n for n in names if Path(f"/run/netns/{n}").exists()]
        if leftovers:
            raise LabError(f"could not remove network namespaces {leftovers}: see `ip netns pids`")

    def _teardown_host(self, name: str) -> list[int]:
        # Hosts are throwaway: no graceful docker stop. Killing every process in the
        # host's netns (init, dockerd, containerd, shims, sshd and sessions) and in its
        # cgroup (containers, which have netns of their own) takes well under a
        # second. Their mounts vanish with the last process of the mount namespace.
        deadline = time.monotonic() + 15
        killed: set[int] = set()
        while True:
            pids = netns_pids(name) | cgroup_pids(name)
            pids = {p for p in pids if pid_alive(p)}
            if not pids:
                break
            killed |= pids
            if time.monotonic() > deadline:
                raise LabError(
                    f"{name}: pids {sorted(pids)} survive SIGKILL; check `ps` for D state"
                )
            kill_pids(pids)
            time.sleep(0.02)
        remove_cgroups(name)
        if Path(f"/run/netns/{name}").exists():
            run(["ip", "netns", "del", name])
        if Path(f"/sys/class/net/lab-{name}").exists():
            run(["ip", "link", "del", f"lab-{name}"], check=False)
        shutil.rmtree(self.dir / "hosts" / name, ignore_errors=True)
        return sorted(killed)

    # firewall helpers for tests ------------------------------------------------

    def block_ssh(self, *hosts: Host | str, drop: bool = False) -> None:
        """Block the deployer's direct SSH to hosts; other lab hosts still reach them.

        The deployer talks to hosts from 10.210.0.1 through its own OUTPUT chain;
        host-to-host traffic is bridged and never passes there. The default rejects
        (the client sees "connection refused" at once); drop=True makes it time out.
        """
        for h in hosts:
            rule = self._ssh_rule(h, drop)
            if run(["iptables", "-w", "-C", CHAIN_OUTPUT, *rule], check=False).returncode != 0:
                run(["iptables", "-w", "-A", CHAIN_OUTPUT, *rule])

    def unblock_ssh(self, *hosts: Host | str) -> None:
        for h in hosts:
            for drop in (False, True):
                rule = self._ssh_rule(h, drop)
                while (
                    run(["iptables", "-w", "-C", CHAIN_OUTPUT, *rule], check=False).returncode == 0
                ):
                    run(["iptables", "-w", "-D", CHAIN_OUTPUT, *rule])

    def ssh_blocked_hosts(self) -> list[str]:
        rules = run(["iptables", "-w", "-S", CHAIN_OUTPUT], check=False).stdout
        addresses = re.findall(r"-d (\S+?)(?:/32)? .*--dport 22\b", rules)
        by_address = {f"{NET_PREFIX}.{10 + i}": f"h{i}" for i in range(1, MAX_HOSTS + 1)}
        return [by_address.get(a, a) for a in addresses]

    @contextlib.contextmanager
    def ssh_blocked(self, *hosts: Host | str, drop: bool = False) -> Iterator[None]:
        self.block_ssh(*hosts, drop=drop)
        try:
            yield
        finally:
            self.unblock_ssh(*hosts)

    def _ssh_rule(self, h: Host | str, drop: bool) -> list[str]:
        address = h.address if isinstance(h, Host) else self._address_of(h)
        action = ["DROP"] if drop else ["REJECT", "--reject-with", "tcp-reset"]
        return ["-d", f"{address}/32", "-p", "tcp", "--dport", "22", "-j", *action]

    @staticmethod
    def _address_of(name: str) -> str:
        match = HOST_NAME_RE.match(name)
        if not match:
            raise LabError(f"not a lab host name: {name!r} (expected h1, h2, ...)")
        return f"{NET_PREFIX}.{10 + int(match.group(1))}"

    def restore(self) -> None:
        """Undo what tests may have left: SSH blocks and stopped sshds."""
        if self.ssh_blocked_hosts():
            run(["iptables", "-w", "-F", CHAIN_OUTPUT])
        for h in self.hosts:
            h.start_sshd()

    def free_port(self) -> int:
        """A free TCP port on the deployer that lab hosts may connect to (allow-list)."""
        candidates = [p for lo, hi in self.allowed_ports for p in range(lo, hi + 1)]
        random.shuffle(candidates)
        for port in candidates:
            with socket.socket() as sock:
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError:
                    continue
                return port
        raise LabError(f"no free port in the lab allow-list {self.allowed_ports_spec}")

    # status --------------------------------------------------------------------

    def status(self) -> tuple[bool, str]:
        state = self._read_state()
        lines = [f"lab dir: {self.dir}"]
        root_pid = read_pid(Path("/var/run/docker.pid"))
        ours = read_pid(self._pids / "root-dockerd.pid") == root_pid
        lines.append(
            f"root dockerd: {'running' if pid_alive(root_pid) else 'not running'}"
            + (
                f" (pid {root_pid}{', started by the lab' if ours else ''})"
                if pid_alive(root_pid)
                else ""
            )
        )
        registry_ok = True
        for name, address, port in self._registry_endpoints():
            pid = read_pid(self._pids / f"registry-{name}.pid")
            alive = pid_alive(pid) and proc_comm(pid or 0) == "docker-registry"
            registry_ok &= alive
            lines.append(
                f"registry {address}:{port}: "
                + (f"running (pid {pid})" if alive else "not running")
            )
        firewall = run(["iptables", "-w", "-S", CHAIN_FORWARD], check=False).returncode == 0
        lines.append(
            f"bridge {BRIDGE}: {'present' if Path(f'/sys/class/net/{BRIDGE}').exists() else 'absent'}; "
            f"firewall chains: {'present' if firewall else 'absent'}"
        )
        blocked = self.ssh_blocked_hosts()
        if blocked:
            lines.append(f"deployer SSH blocked to: {', '.join(blocked)}")
        healthy = bool(state.get("complete")) and registry_ok and firewall
        names = self._known_host_names()
        for name in names:
            h = self._make_host(int(name[1:]))
            init = read_pid(h.dir / "pids" / "init.pid")
            dockerd = read_pid(h.dir / "pids" / "dockerd.pid")
            parts = [
                f"init {'up' if pid_alive(init) else 'DOWN'}",
                f"sshd {'up' if h.sshd_running() else 'DOWN'}",
                f"dockerd {'up' if pid_alive(dockerd) else 'DOWN'}",
            ]
            healthy &= pid_alive(init) and pid_alive(dockerd)
            lines.append(
                f"{name:4} {h.address:13} {', '.join(parts):35} ssh -F {self.ssh_config} {name}"
            )
        if not names:
            lines.append("no hosts: bring the lab up with `make lab-up N=3`")
            healthy = False
        lines.append(f"lab is {'UP' if healthy else 'NOT fully up'}")
        return healthy, "\n".join(lines)

    def _print_summary(self, seconds: float) -> None:
        rel = (
            os.path.relpath(self.ssh_config)
            if str(self.ssh_config).startswith(os.getcwd())
            else self.ssh_config
        )
        lines = [
            f"lab: up: {len(self.hosts)} host(s) in {seconds:.1f}s "
            f"(storage driver {self.storage_driver})"
        ]
        lines += [f"  {h.name:4} {h.address:13} ssh -F {rel} {h.name}" for h in self.hosts]
        lines.append(
            f"  registry: push localhost:{REGISTRY_LOCAL_PORT}/NAME:TAG from the deployer, "
            f"hosts pull {self.registry_for_hosts}/NAME:TAG"
        )
        lines.append(
            f"  ports hosts may reach on {DEPLOYER_ADDRESS}: {REGISTRY_HOST_PORT}, {self.allowed_ports_spec}"
        )
        lines.append("  stop: make lab-down")
        print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------- small helpers


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", key).write_text(value)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _http_json(url: str, accept: str) -> dict[str, Any] | None:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _listener_pids(address: str, port: int, *, any_process: bool = False) -> set[int]:
    out = run(["ss", "-Hltnp", "src", f"{address}:{port}"], check=False).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    return pids if any_process else {p for p in pids if proc_comm(p) == "docker-registry"}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _os_release() -> dict[str, str]:
    values = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            values[key] = value.strip().strip('"')
    return values


def apt_mirror(suite: str) -> str:
    """The Debian mirror apt uses for `suite`, read from apt's own sources at run time
    (deb822 *.sources first, then sources.list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                return fields["uris"].split()[0]
    for path in [
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = [w for w in line.split() if not w.startswith("[") and not w.endswith("]")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise LabError(
        f"no apt source for {suite} in /etc/apt/sources.list(.d): add one or set up apt, then retry"
    )


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab-dir", help="state dir (default $SHIPYARD_LAB_DIR or .lab)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="bring up hosts h1..hN (tears down any old lab first)")
    p_up.add_argument(
        "--hosts", "-n", type=int, default=int(os.environ.get("SHIPYARD_LAB_HOSTS", "3"))
    )
    p_up.add_argument(
        "--allow-ports", help=f"deployer ports hosts may reach (default {DEFAULT_ALLOWED_PORTS})"
    )
    p_up.add_argument("--no-images", action="store_true", help="skip base images (faster)")
    p_up.add_argument(
        "--keep-on-failure", action="store_true", help="leave a failed lab for debugging"
    )
    p_down = sub.add_parser("down", help="stop everything the lab started")
    p_down.add_argument("--keep-docker", action="store_true", help="leave the root dockerd running")
    p_down.add_argument(
        "--purge", action="store_true", help="also delete registry data, keys and logs"
    )
    sub.add_parser("status", help="show what runs; exit 0 only if the lab is fully up")
    sub.add_parser(
        "images", help="build/cache the base images and import them into the root dockerd"
    )
    p_block = sub.add_parser("block-ssh", help="block the deployer's direct SSH to hosts")
    p_block.add_argument("hosts", nargs="+")
    p_block.add_argument("--drop", action="store_true", help="drop (time out) instead of reject")
    p_unblock = sub.add_parser("unblock-ssh", help="undo block-ssh")
    p_unblock.add_argument("hosts", nargs="*", help="default: all")
    p_sshd = sub.add_parser("sshd", help="stop or start a host's sshd")
    p_sshd.add_argument("action", choices=["stop", "start"])
    p_sshd.add_argument("hosts", nargs="+")
    p_exec = sub.add_parser("exec", help="run a command inside a host without ssh")
    p_exec.add_argument("host")
    p_exec.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    lab = Lab(args.lab_dir, allowed_ports=getattr(args, "allow_ports", None))
    try:
        if args.command == "up":
            lab.up(args.hosts, images=not args.no_images, keep_on_failure=args.keep_on_failure)
        elif args.command == "down":
            lab.down(stop_root_docker=not args.keep_docker, purge=args.purge)
        elif args.command == "status":
            healthy, text = lab.status()
            print(text)
            return 0 if healthy else 3
        elif args.command == "images":
            lab._preflight()
            lab.dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
            lab._ensure_root_dockerd()
            lab._prepare_base_images(push=False)
        elif args.command == "block-ssh":
            lab.block_ssh(*args.hosts, drop=args.drop)
        elif args.command == "unblock-ssh":
            if args.hosts:
                lab.unblock_ssh(*args.hosts)
            else:
                run(["iptables", "-w", "-F", CHAIN_OUTPUT])
        elif args.command == "sshd":
            lab.attach()
            for name in args.hosts:
                host = lab.host(name)
                host.stop_sshd() if args.action == "stop" else host.start_sshd()
        elif args.command == "exec":
            lab.attach()
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return subprocess.call(
                lab.host(args.host).nsenter_argv(cmd or ["bash", "-l"]), env=CLEAN_ENV
            )
    except LabError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
