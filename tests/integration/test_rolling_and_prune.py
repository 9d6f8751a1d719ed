"""Rolling boot in groups (boot.limit), and pruning after many deploys."""

from __future__ import annotations

import stat
import subprocess
from typing import Any

import pytest
from deploy_helpers import DeployProject, reset_hosts


def test_boot_limit_one_boots_hosts_one_at_a_time(
    lab: Any, proxy_image: str, tmp_path: Any
) -> None:
    hosts = lab.hosts[:3]
    reset_hosts(lab)
    project = DeployProject(tmp_path / "rolling", lab)
    project.configure([h.address for h in hosts], boot={"limit": 1})
    log = tmp_path / "groups"
    for hook in ("pre-app-boot", "post-app-boot"):
        script = project.path / ".shipyard" / "hooks" / hook
        script.parent.mkdir(parents=True, exist_ok=True)
        # Nanosecond timestamps from the hook itself: the order of events is the evidence.
        script.write_text(f'#!/bin/sh\necho "$(date +%s%N) {hook} $SHIPYARD_HOSTS" >> {log}\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    project.run("setup", "--version", "r1").ok()
    log.unlink()
    project.commit("r2")
    project.run("deploy", "--version", "r2").ok()
    events = [line.split() for line in log.read_text().splitlines()]
    assert [(hook, group) for _, hook, group in events] == [
        (hook, h.address) for h in hosts for hook in ("pre-app-boot", "post-app-boot")
    ]
    stamps = [int(stamp) for stamp, _, _ in events]
    assert stamps == sorted(stamps)
    # Each host's new container started after the previous group's post-app-boot.
    started = []
    for host in hosts:
        inspect = host.run(
            "docker inspect --format '{{.State.StartedAt}}' demo-web-r2"
        ).stdout.strip()
        started.append(
            int(
                subprocess.run(
                    ["date", "-d", inspect, "+%s%N"], capture_output=True, text=True, check=True
                ).stdout
            )
        )
    post_stamps = [int(stamp) for stamp, hook, _ in events if hook == "post-app-boot"]
    pre_stamps = [int(stamp) for stamp, hook, _ in events if hook == "pre-app-boot"]
    for index in range(1, len(hosts)):
        assert post_stamps[index - 1] <= started[index], (
            "a host booted before the previous group finished"
        )
        assert pre_stamps[index] <= started[index]


def test_prune_keeps_five_stopped_containers_and_their_images(
    lab: Any, proxy_image: str, tmp_path: Any
) -> None:
    hosts = lab.hosts[:2]
    reset_hosts(lab)
    project = DeployProject(tmp_path / "prune", lab, service="prune")
    project.configure([h.address for h in hosts])
    for number in range(1, 9):
        project.commit(f"p{number}")
        project.run("deploy", "--version", f"p{number}").ok()
    for host in hosts:
        containers = host.run(
            "docker ps -a --filter label=service=prune --format '{{.Names}} {{.State}}'"
        ).stdout.split("\n")
        states = dict(line.split() for line in containers if line.strip())
        assert states == {
            "prune-web-p8": "running",
            **{f"prune-web-p{n}": "exited" for n in range(3, 8)},
        }
        tags = set(
            host.run("docker image ls localhost:5555/prune --format '{{.Tag}}'").stdout.split()
        )
        assert tags == {"latest", *(f"p{n}" for n in range(3, 9))}


@pytest.mark.parametrize("retain", [2])
def test_prune_containers_retain_flag(
    lab: Any, proxy_image: str, tmp_path: Any, retain: int
) -> None:
    host = lab.hosts[0]
    project = DeployProject(tmp_path / "prune2", lab, service="prune")
    project.configure([host.address])
    project.run("prune", "containers", "--retain", str(retain)).ok()
    stopped = host.run(
        "docker ps -a --filter label=service=prune --filter status=exited -q"
    ).stdout.split()
    assert len(stopped) == retain
