"""Issue 3 on real servers: `server exec`, `server bootstrap`, the deploy lock, the audit
log, registry login and details, through the real CLI over real SSH."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import LabProject

DANGEROUS = "$(touch /tmp/pwned) `touch /tmp/pwned2` 'single' \"double\" \\back\nsecond line; touch /tmp/pwned3"


@pytest.fixture
def project(tmp_path: Path, lab: Any) -> LabProject:
    project = LabProject(tmp_path / "app", lab)
    project.write_config(
        {
            "service": "labapp",
            "image": "labapp",
            "servers": [h.address for h in lab.hosts[:3]],
            "registry": {
                "server": "10.210.0.1:5000",
                "username": "lab",
                "password": ["REGISTRY_PASSWORD"],
            },
        }
    )
    (project.path / ".shipyard").mkdir()
    (project.path / ".shipyard" / "secrets").write_text(
        "REGISTRY_PASSWORD=not-checked-by-the-lab-registry\n"
    )
    return project


def test_server_exec_prints_each_hosts_name_with_an_aligned_prefix(
    project: LabProject, lab: Any
) -> None:
    result = project.run("server", "exec", "hostname").ok()
    assert result.stdout.splitlines() == [f"[{h.address}] {h.name}" for h in lab.hosts[:3]]


def test_filters_pick_hosts(project: LabProject, lab: Any) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    assert project.run("server", "exec", "-p", "hostname").ok().stdout == f"[{h1.address}] h1\n"
    assert (
        project.run("server", "exec", "-h", h2.address, "hostname").ok().stdout
        == f"[{h2.address}] h2\n"
    )
    assert (
        project.run("server", "exec", "-h", "10.210.0.1[23]", "-r", "web", "hostname")
        .ok()
        .stdout.count("\n")
        == 2
    )


def test_a_stopped_host_is_named_while_the_others_still_print(
    project: LabProject, lab: Any
) -> None:
    h1, h2, h3 = lab.hosts[:3]
    with h3.sshd_stopped():
        result = project.run("server", "exec", "hostname")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"[{h1.address}] h1", f"[{h2.address}] h2"]
    errors = result.stderr.strip().splitlines()
    assert (
        len(errors) == 1
        and errors[0].startswith(f"Error: [{h3.address}] ")
        and ("refused" in errors[0] or "unreachable" in errors[0])
    )


def test_a_failing_command_reports_its_host_and_stderr(project: LabProject, lab: Any) -> None:
    result = project.run("server", "exec", "-p", "echo out; echo boom >&2; exit 7")
    assert result.exit_code == 1
    assert result.stdout == f"[{lab.hosts[0].address}] out\n"
    assert (
        result.stderr.strip()
        == f"Error: [{lab.hosts[0].address}] `echo out; echo boom >&2; exit 7` exited with 7: boom"
    )


def test_jump_host_reaches_hosts_the_deployer_cannot(project: LabProject, lab: Any) -> None:
    h1, h2, h3 = lab.hosts[:3]
    project.write_config(
        {
            "service": "labapp",
            "image": "labapp",
            "servers": [h2.address, h3.address],
            "ssh": project.ssh_settings(proxy=f"root@{h1.address}"),
        }
    )
    with lab.ssh_blocked("h2", "h3"):
        direct = LabProject(project.path.parent / "direct", lab)
        direct.write_config({"service": "labapp", "image": "labapp", "servers": [h2.address]})
        assert direct.run("server", "exec", "hostname", timeout=120).exit_code == 1
        result = project.run("server", "exec", "hostname").ok()
    assert result.stdout.splitlines() == [f"[{h2.address}] h2", f"[{h3.address}] h3"]


def test_an_unknown_host_key_is_refused_naming_the_host(
    project: LabProject, lab: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    h1 = lab.hosts[0]
    result = project.run(
        "server",
        "exec",
        "-p",
        "hostname",
        env=project.env(SHIPYARD_SSH_KNOWN_HOSTS=str(empty), HOME=str(tmp_path)),
    )
    assert result.exit_code == 1
    assert re.match(rf"^Error: \[{re.escape(h1.address)}\] host key is not known", result.stderr)


def test_lock_race_has_exactly_one_winner(project: LabProject, lab: Any) -> None:
    racers = [project.start("lock", "acquire", "-m", f"racer {n}") for n in range(2)]
    outcomes = [
        (racer.wait(timeout=120), racer.stdout.read(), racer.stderr.read()) for racer in racers
    ]  # type: ignore[union-attr]
    winners = [n for n, (code, _, _) in enumerate(outcomes) if code == 0]
    assert len(winners) == 1, outcomes
    loser = outcomes[1 - winners[0]]
    assert (
        loser[0] == 1
        and "Deploy lock found" in loser[2]
        and f"Message: racer {winners[0]}" in loser[2]
    )
    status = project.run("lock", "status").ok().stdout
    assert re.match(
        r"^Locked by: .+ at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nVersion: v-test\nMessage: racer \d\n$",
        status,
    )
    assert f"Message: racer {winners[0]}" in status
    project.run("lock", "release").ok()
    assert project.run("lock", "status").ok().stdout == "There is no deploy lock\n"


def test_lock_wait_gives_up_on_a_manual_lock(project: LabProject) -> None:
    project.run("lock", "acquire", "-m", "maintenance window").ok()
    try:
        result = project.run(
            "lock",
            "acquire",
            "-m",
            "Automatic deploy lock",
            "--lock-wait",
            "--lock-wait-timeout",
            "5",
        )
        assert result.exit_code == 1 and "taken by hand" in result.stderr
    finally:
        project.run("lock", "release").ok()


def test_lock_wait_waits_for_an_automatic_lock(project: LabProject) -> None:
    project.run("lock", "acquire", "-m", "Automatic deploy lock").ok()
    waiter = project.start(
        "lock",
        "acquire",
        "-m",
        "next",
        "--lock-wait",
        "--lock-wait-interval",
        "0.5",
        "--lock-wait-timeout",
        "120",
    )
    try:
        # The waiter polls; release the first lock and the waiter must get it.
        while "Waiting for the deploy lock" not in (line := waiter.stdout.readline()):  # type: ignore[union-attr]
            assert line, "the waiter ended without waiting"
        project.run("lock", "release").ok()
        assert waiter.wait(timeout=120) == 0
        assert "Message: next" in project.run("lock", "status").ok().stdout
    finally:
        waiter.kill()
        project.run("lock", "release")


def test_config_values_and_messages_arrive_verbatim_and_run_nothing(
    project: LabProject, lab: Any
) -> None:
    from shipyard.core import remote_docker
    from shipyard.core.testing import Project

    h1 = lab.hosts[0]
    h1.run("rm -f /tmp/pwned /tmp/pwned2 /tmp/pwned3")
    project.write_config(
        {
            "service": "labapp",
            "image": "labapp",
            "servers": [h1.address],
            "env": {"clear": {"DANGER": DANGEROUS}},
        }
    )
    # 1. a config value through the remote Docker layer into a container's environment
    kit = Project(project.path)
    previous = os.environ.get("SHIPYARD_SSH_KNOWN_HOSTS")
    os.environ["SHIPYARD_SSH_KNOWN_HOSTS"] = str(lab.known_hosts)
    try:
        ctx = kit.context("server", "exec", version="v1")
        env = ctx.config.role("web").env.clear
        argv = remote_docker.run(
            "busybox:local",
            name="quoting-probe",
            restart=None,
            detach=False,
            env=env,
            options={"rm": True},
            cmd=["sh", "-c", 'printf "%s\\n" "$DANGER"'],
        )
        result = ctx.connections.get(h1.address).check(argv)
        ctx.connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("SHIPYARD_SSH_KNOWN_HOSTS")
        else:
            os.environ["SHIPYARD_SSH_KNOWN_HOSTS"] = previous
    assert result.stdout == DANGEROUS + "\n"
    # 2. a lock message through the CLI, the lock details file and back
    project.run("lock", "acquire", "-m", DANGEROUS).ok()
    try:
        assert project.run("lock", "status").ok().stdout.endswith(f"Message: {DANGEROUS}\n")
    finally:
        project.run("lock", "release").ok()
    for marker in ("/tmp/pwned", "/tmp/pwned2", "/tmp/pwned3"):
        assert (
            h1.run(f"test -e {marker} && echo present || echo absent").stdout.strip() == "absent"
        ), marker


def test_audit_log_records_actions_with_utc_times(project: LabProject, lab: Any) -> None:
    project.run("server", "exec", "true").ok()
    result = project.run("audit").ok()
    for host in lab.hosts[:3]:
        lines = [
            line for line in result.stdout.splitlines() if line.startswith(f"[{host.address}]")
        ]
        assert re.search(
            r"\] \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] \[[^]]+\] Executed cmd 'true'$", lines[-1]
        ), lines


def test_bootstrap_finds_docker_and_runs_the_docker_setup_hook(
    project: LabProject, lab: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "docker-setup-ran"
    hook = project.path / ".shipyard" / "hooks" / "docker-setup"
    hook.parent.mkdir(parents=True)
    hook.write_text(f'#!/bin/sh\necho "$SHIPYARD_HOSTS" > {marker}\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    result = project.run("server", "bootstrap").ok()
    assert (
        len(
            [
                line
                for line in result.stdout.splitlines()
                if re.search(r"Docker \S+ is ready$", line)
            ]
        )
        == 3
    )
    assert marker.read_text().strip() == ",".join(h.address for h in lab.hosts[:3])


def test_registry_login_and_logout_on_the_hosts(project: LabProject, lab: Any) -> None:
    login = project.run("registry", "login", "--skip-local").ok()
    assert login.stdout.count("Logged in to 10.210.0.1:5000") == 3
    assert "not-checked-by-the-lab-registry" not in login.stdout + login.stderr
    assert (
        project.run("registry", "logout", "-L").ok().stdout.count("Logged out of 10.210.0.1:5000")
        == 3
    )


def test_details_lists_what_exists(project: LabProject, lab: Any) -> None:
    result = project.run("details").ok()
    for host in lab.hosts[:3]:
        assert f"[{host.address}] Proxy:" in result.stdout
