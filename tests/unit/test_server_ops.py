"""Server commands against the recording fake transport: what is sent, and how results
and failures are shown. (The same commands run against real sshd in tests/integration.)"""

from __future__ import annotations

import pytest

from shipyard.core import remote_docker
from shipyard.core.testing import FakeTransportKit, Project

CONFIG = {
    "service": "app",
    "image": "acme/app",
    "servers": {"web": ["web-1", "web-2"], "jobs": ["job-10"]},
}


@pytest.fixture
def project(shipyard_project: Project) -> Project:
    shipyard_project.write_config(CONFIG)
    return shipyard_project


def test_exec_runs_through_the_remote_shell_and_aligns_output(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    shipyard_fake_transport.respond(r"^sh -c 'uname -n'$", stdout="linux\n")
    result = project.run("server", "exec", "--version", "v1", "uname", "-n").assert_ok()
    assert result.stdout.splitlines() == ["[web-1]  linux", "[web-2]  linux", "[job-10] linux"]
    assert shipyard_fake_transport.commands["web-1"][0] == ("sh", "-c", "uname -n")
    audit = shipyard_fake_transport.commands["web-1"][1]
    assert audit[:3] == ("sh", "-c", 'mkdir -p "$1" && printf "%s\\n" "$3" >> "$2"')
    assert audit[4:6] == (".shipyard", ".shipyard/app-audit.log")
    assert audit[6].endswith("Executed cmd 'uname -n'")


def test_exec_failures_are_one_line_per_host_after_the_successes(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    shipyard_fake_transport.respond("false", exit_status=1, stderr="nope\n", host="web-2")
    result = project.run("server", "exec", "--version", "v1", "false")
    assert result.exit_code == 1
    assert result.stderr == "Error: [web-2] `false` exited with 1: nope\n"


def test_lock_acquire_is_one_atomic_command_with_details_on_stdin(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    project.run("lock", "acquire", "-m", "hello", "--version", "v9").assert_ok()
    (command,) = shipyard_fake_transport.commands["web-1"]
    assert command[:2] == ("sh", "-c") and command[3:] == ("sh", ".shipyard", ".shipyard/lock-app")
    assert "job-10" not in shipyard_fake_transport.commands


def test_lock_held_reports_the_holder(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    # The holder's details come back from the same round trip that failed to take the lock.
    details = "Locked by: x at 2026-01-01T00:00:00Z\nVersion: v1\nMessage: m\n"
    shipyard_fake_transport.respond(r"mkdir", exit_status=3, stdout=details)
    result = project.run("lock", "acquire", "-m", "again", "--version", "v1")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: Deploy lock found. Run 'shipyard lock help' for more information",
        "Error: Locked by: x at 2026-01-01T00:00:00Z",
        "Error: Version: v1",
        "Error: Message: m",
    ]


def test_a_lock_without_details_is_looked_at_again(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    # A holder still writing its details (or just letting go) is not mistaken for a manual lock.
    shipyard_fake_transport.respond(r"mkdir", exit_status=3, stdout="")
    result = project.run("lock", "acquire", "-m", "again", "--version", "v1")
    assert result.exit_code == 1
    assert len(shipyard_fake_transport.commands["web-1"]) > 1
    assert "Locked (no details)" in result.stderr


def test_lock_status_without_a_lock(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    shipyard_fake_transport.respond(r"^sh -c .test -d", exit_status=3)
    assert project.run("lock", "status").assert_ok().stdout == "There is no deploy lock\n"


def test_registry_password_goes_on_stdin(
    project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    project.write_config(
        {**CONFIG, "registry": {"server": "reg.example.com", "username": "me", "password": ["PW"]}}
    )
    project.write_secrets("PW=pa55word-secret\n")
    result = project.run("registry", "login", "-L").assert_ok()
    sent = shipyard_fake_transport.commands["web-1"][0]
    assert sent == tuple(remote_docker.login("reg.example.com", "me"))
    assert "pa55word" not in " ".join(sent) and "pa55word" not in result.stdout


def test_registry_login_is_refused_for_a_local_registry(project: Project) -> None:
    project.write_config({**CONFIG, "registry": {"server": "localhost:5555"}})
    result = project.run("registry", "login")
    assert result.exit_code == 1 and "local registry (localhost:5555)" in result.stderr


def test_docker_run_argv_keeps_values_whole() -> None:
    argv = remote_docker.run(
        "img:1",
        name="app-web-1",
        network="shipyard",
        env={"A": "x y $(z)"},
        container_labels={"service": "app"},
        options={"memory": "1g", "cap-add": ["NET_ADMIN", "SYS_TIME"], "init": True},
        cmd=["bin/run", "--flag"],
    )
    assert argv == [
        "docker",
        "run",
        "--detach",
        "--restart",
        "unless-stopped",
        "--name",
        "app-web-1",
        "--network",
        "shipyard",
        "--env",
        "A=x y $(z)",
        "--label",
        "service=app",
        "--memory=1g",
        "--cap-add=NET_ADMIN",
        "--cap-add=SYS_TIME",
        "--init",
        "img:1",
        "bin/run",
        "--flag",
    ]
