"""Tests of the lab itself (tests/lab), with the system ssh client and subprocess only.

If these fail, every other integration test is suspect: start here.
"""

from __future__ import annotations

import http.server
import os
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from shipyard_lab import DEPLOYER_ADDRESS, Host, Lab

LAB_PY = Path(__file__).resolve().parents[1] / "lab" / "lab.py"
ROOT_DOCKER = ["docker", "-H", "unix:///var/run/docker.sock"]
# Upper bound on commands that must fail fast, so a broken firewall fails the test
# instead of hanging it. It is a safety net, not something the tests measure.
HANG_GUARD = 20


def ssh(host: Host, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    """The system ssh client with the lab's ssh_config, as a person would use it."""
    return subprocess.run(
        ["ssh", "-F", str(host.ssh_config), *options, host.name, command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ssh_ok(host: Host, command: str, *options: str) -> str:
    result = ssh(host, command, *options)
    assert result.returncode == 0, f"ssh {host.name} {command!r}: {result.stderr.strip()}"
    return result.stdout


def test_every_host_answers_ssh_with_its_own_hostname(lab_hosts: list[Host]) -> None:
    assert [h.name for h in lab_hosts] == [f"h{i}" for i in range(1, len(lab_hosts) + 1)]
    for host in lab_hosts:
        assert ssh_ok(host, "hostname").strip() == host.name
        # By address too: known_hosts lists both, and host-key checking stays on.
        by_address = subprocess.run(
            ["ssh", "-F", str(host.ssh_config), f"root@{host.address}", "cat /etc/hostname"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert by_address.stdout.strip() == host.name


def test_host_fields_are_what_an_ssh_client_needs(lab_hosts: list[Host]) -> None:
    for host in lab_hosts:
        assert host.user == "root"
        assert host.address == f"10.210.0.{10 + host.index}"
        assert host.key_path.is_file() and host.known_hosts.is_file()
        # A client that uses only these fields, not the ssh_config.
        result = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(host.key_path), "-o", "IdentitiesOnly=yes",
             "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", f"{host.user}@{host.address}", "hostname"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.name


def test_every_host_has_its_own_dockerd_and_filesystem(lab_hosts: list[Host]) -> None:
    infos = [ssh_ok(h, "docker info -f '{{.Name}} {{.ID}}'").split() for h in lab_hosts]
    assert [name for name, _ in infos] == [h.name for h in lab_hosts]
    ids = {daemon_id for _, daemon_id in infos}
    root_id = subprocess.run(
        [*ROOT_DOCKER, "info", "-f", "{{.ID}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(ids) == len(lab_hosts) and root_id not in ids

    marker = f"lab-{uuid.uuid4().hex}"
    first, *others = lab_hosts
    ssh_ok(first, f"echo {marker} > /root/marker && echo {marker} > /tmp/marker")
    try:
        for other in others:
            assert marker not in ssh_ok(other, "cat /root/marker /tmp/marker 2>/dev/null; true")
        assert not Path("/root/marker").exists()
    finally:
        ssh_ok(first, "rm -f /root/marker /tmp/marker")


def test_base_images_are_on_every_host(lab_hosts: list[Host]) -> None:
    for host in lab_hosts:
        assert ssh_ok(host, "docker run --rm busybox:local echo busybox-ok").strip() == "busybox-ok"
        out = ssh_ok(host, "docker run --rm pybase:local python3 -c 'print(6 * 7)'")
        assert out.strip() == "42"


def test_host_pulls_what_the_deployer_pushed(lab: Lab, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    local = f"{lab.registry_for_deployer}/lab-selftest:{tag}"
    (tmp_path / "Dockerfile").write_text(
        f'FROM busybox:local\nRUN echo {tag} > /tag\nCMD ["cat", "/tag"]\n'
    )
    subprocess.run([*ROOT_DOCKER, "build", "-q", "-t", local, str(tmp_path)],
                   capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    subprocess.run([*ROOT_DOCKER, "push", local],
                   capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    h1 = lab.hosts[0]
    remote = f"{lab.registry_for_hosts}/lab-selftest:{tag}"
    ssh_ok(h1, f"docker pull -q {remote}")
    assert ssh_ok(h1, f"docker run --rm {remote}").strip() == tag
    ssh_ok(h1, f"docker rmi {remote}")


def test_hosts_reach_each_other_over_ssh_and_published_ports(lab_hosts: list[Host]) -> None:
    if len(lab_hosts) < 2:
        pytest.fail("this test needs at least 2 lab hosts (SHIPYARD_LAB_HOSTS)")
    h1, h2 = lab_hosts[:2]
    banner = ssh_ok(
        h1, f"timeout {HANG_GUARD} bash -c 'exec 3<>/dev/tcp/{h2.name}/22; head -c 7 <&3'"
    )
    assert banner == "SSH-2.0"

    name = f"lab-web-{uuid.uuid4().hex[:8]}"
    # httpd as PID 1 ignores SIGTERM: `rm -f` (SIGKILL) keeps clean-up instant.
    ssh_ok(h2, f"docker run -d --name {name} -p 18080:8080 busybox:local "
               "sh -c 'hostname > /www && exec httpd -f -p 8080 -h /'")  # fmt: skip
    try:
        fetch = (
            "import urllib.request; "
            f"print(urllib.request.urlopen('http://{h2.address}:18080/www', timeout={HANG_GUARD}).read().decode())"
        )
        container_id = ssh_ok(h2, f"docker inspect -f '{{{{.Config.Hostname}}}}' {name}").strip()
        assert ssh_ok(h1, f"python3 -c {shlex.quote(fetch)}").strip() == container_id
    finally:
        ssh_ok(h2, f"docker rm -f {name}")


def test_nothing_leaves_the_lab(lab_hosts: list[Host]) -> None:
    h1 = lab_hosts[0]
    # Refused at once by the lab firewall (tcp-reset), not silently dropped.
    outside = ssh(h1, f"timeout {HANG_GUARD} bash -c 'echo > /dev/tcp/1.1.1.1/80'")
    assert outside.returncode == 1 and "Connection refused" in outside.stderr
    # From a container too: its traffic is forwarded by the host, then by the deployer.
    from_container = ssh(
        h1, f"docker run --rm busybox:local timeout {HANG_GUARD} nc 1.1.1.1 80 </dev/null"
    )
    assert from_container.returncode != 0
    assert "refused" in from_container.stderr.lower()
    # Name lookups go to 10.210.0.1:53, which is rejected: no resolution, no hang.
    assert ssh(h1, f"timeout {HANG_GUARD} getent hosts deb.debian.org").returncode == 2
    # The deployer's own services are closed to hosts, apart from the allow-list.
    closed = ssh(h1, f"timeout {HANG_GUARD} bash -c 'echo > /dev/tcp/{DEPLOYER_ADDRESS}/22'")
    assert closed.returncode == 1 and "Connection refused" in closed.stderr


@pytest.fixture
def deployer_http_server(lab: Lab) -> Iterator[tuple[int, str]]:
    """A tiny HTTP server on the deployer in the allowed port range (like a fake CI
    status server), answering every GET with a token."""
    token = uuid.uuid4().hex

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((DEPLOYER_ADDRESS, lab.free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()


def test_hosts_reach_allowed_deployer_ports(
    lab: Lab, deployer_http_server: tuple[int, str]
) -> None:
    port, token = deployer_http_server
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{DEPLOYER_ADDRESS}:{port}/', timeout={HANG_GUARD}).read().decode())"
    assert ssh_ok(lab.hosts[0], f"python3 -c {shlex.quote(fetch)}").strip() == token


def test_blocked_hosts_are_reachable_through_a_jump_host(lab_hosts: list[Host], lab: Lab) -> None:
    if len(lab_hosts) < 3:
        pytest.fail("this test needs at least 3 lab hosts (SHIPYARD_LAB_HOSTS)")
    h1, h2, h3 = lab_hosts[:3]
    with lab.ssh_blocked(h2, h3):
        for target in (h2, h3):
            direct = ssh(target, "hostname")
            assert direct.returncode == 255 and "Connection refused" in direct.stderr
            assert ssh_ok(target, "hostname", "-J", h1.name).strip() == target.name
        assert ssh_ok(h1, "hostname").strip() == h1.name
    assert ssh_ok(h2, "hostname").strip() == h2.name


def test_a_stopped_host_refuses_ssh(lab_hosts: list[Host]) -> None:
    host = lab_hosts[-1]
    with host.sshd_stopped():
        refused = ssh(host, "hostname")
        assert refused.returncode == 255 and "Connection refused" in refused.stderr
        # Still reachable without SSH, and its dockerd keeps running.
        assert host.run("hostname").stdout.strip() == host.name
        assert host.docker("info", "-f", "{{.Name}}").strip() == host.name
    assert ssh_ok(host, "hostname").strip() == host.name


def lab_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAB_PY), "--lab-dir", str(lab.dir), *args],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def lab_up_again(lab: Lab) -> None:
    up = lab_cli(lab, "up", "--hosts", str(len(lab.hosts)), "--allow-ports", lab.allowed_ports_spec)
    assert up.returncode == 0, up.stderr
    lab.attach(min_hosts=len(lab.hosts))


def lab_pids(lab: Lab) -> set[int]:
    """Every process of the lab: in a host's netns, in a host's cgroup, a registry."""
    pids: set[int] = set()
    for host in lab.hosts:
        listed = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True,
                                text=True, check=False).stdout  # fmt: skip
        pids |= {int(p) for p in listed.split()}
        for procs in Path("/sys/fs/cgroup").glob(f"*/lab-{host.name}/**/cgroup.procs"):
            pids |= {int(p) for p in procs.read_text().split()}
    for pid_file in (lab.dir / "pids").glob("registry-*.pid"):
        pids.add(int(pid_file.read_text()))
    return {p for p in pids if Path(f"/proc/{p}").exists()}


@pytest.mark.slow
def test_up_recovers_from_a_crashed_lab(lab: Lab) -> None:
    h1 = lab.hosts[0]
    ssh_ok(h1, "docker run -d --restart always busybox:local sleep 100000")
    # Crash: kill -9 everything at once, leaving netns, veths, bridge, firewall and
    # cgroups behind.
    for pid in lab_pids(lab):
        os.kill(pid, 9)
    assert lab_cli(lab, "status").returncode != 0

    lab_up_again(lab)

    for host in lab.hosts:
        assert ssh_ok(host, "hostname").strip() == host.name
        assert ssh_ok(host, "docker ps -q").strip() == ""  # a fresh server
    assert lab_cli(lab, "status").returncode == 0


@pytest.mark.slow
def test_down_leaves_nothing_and_up_brings_the_lab_back(lab: Lab) -> None:
    names = [h.name for h in lab.hosts]
    ssh_ok(lab.hosts[0], "docker run -d busybox:local sleep 100000")
    before = lab_pids(lab)
    assert before

    down = lab_cli(lab, "down", "--keep-docker")  # the root dockerd serves other tests
    assert down.returncode == 0, down.stderr

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not set(names) & {line.split()[0] for line in netns.stdout.splitlines()}
    assert not [p for p in before if Path(f"/proc/{p}").exists()]
    assert not Path("/sys/class/net/labbr0").exists()
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True)
    assert "SHIPYARD-LAB" not in rules.stdout
    assert not list(Path("/sys/fs/cgroup").glob("*/lab-h*"))

    lab_up_again(lab)
    assert [ssh_ok(h, "hostname").strip() for h in lab.hosts] == names
