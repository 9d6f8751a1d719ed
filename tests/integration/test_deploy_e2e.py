"""The deploy, end to end on the lab: roles, zero downtime, rollback, audit, a broken
deploy, hooks in Kamal's order, and vetoes. Tests in this module run in order on one
project (each step builds on the previous one)."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DeployProject, Load, get, reset_hosts

HOOKS = (
    "pre-connect",
    "pre-build",
    "post-push",
    "pre-deploy",
    "pre-app-boot",
    "post-app-boot",
    "post-deploy",
)


@pytest.fixture(scope="module")
def web_and_workers(
    lab: Any, proxy_image: str, tmp_path_factory: pytest.TempPathFactory
) -> DeployProject:
    h1, h2, h3 = lab.hosts[:3]
    reset_hosts(lab)
    project = DeployProject(tmp_path_factory.mktemp("roles") / "demo", lab)
    project.configure(
        {
            "web": [h1.address, h2.address],
            "workers": {"hosts": [h3.address], "cmd": "python3 /app/app.py worker"},
        }
    )
    marker_dir = project.path.parent / "hooks-ran"
    marker_dir.mkdir()
    for hook in HOOKS:
        script = project.path / ".shipyard" / "hooks" / hook
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{hook} $SHIPYARD_COMMAND $SHIPYARD_VERSION [$SHIPYARD_HOSTS] lock=$SHIPYARD_LOCK '
            f'runtime=$SHIPYARD_RUNTIME kamal=$KAMAL_VERSION" >> {marker_dir}/log\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return project


def hook_log(project: DeployProject) -> list[str]:
    path = project.path.parent / "hooks-ran" / "log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def serving(lab: Any, hosts: list[Any]) -> list[str]:
    answers = []
    for host in hosts:
        status, body = get(host.address)
        assert status == 200, (host.name, status, body)
        answers.append(body.split(" on ")[0])
    return answers


def test_setup_then_deploy_v1(web_and_workers: DeployProject, lab: Any) -> None:
    h1, h2, h3 = lab.hosts[:3]
    web_and_workers.run("setup", "--version", "v1").ok()
    assert serving(lab, [h1, h2]) == ["hello from demo v1", "hello from demo v1"]
    workers = h3.run("docker ps --filter label=role=workers --format '{{.Names}}'").stdout.split()
    assert workers == ["demo-workers-v1"]
    assert h1.run("stat -c %a /root/.shipyard/apps/demo/env/roles/web.env").stdout.strip() == "600"
    names = [line.split()[0] for line in hook_log(web_and_workers)]
    # Kamal's order; pre/post-app-boot once for the single boot group.
    assert names == list(HOOKS)


def test_hooks_get_the_documented_environment(web_and_workers: DeployProject, lab: Any) -> None:
    h1, h2, h3 = lab.hosts[:3]
    web_and_workers.run("deploy", "--version", "v1b").ok()
    lines = {line.split()[0]: line for line in hook_log(web_and_workers)}
    everyone = f"[{h1.address},{h2.address},{h3.address}]"
    assert lines["pre-deploy"] == f"pre-deploy deploy v1b {everyone} lock=true runtime= kamal=v1b"
    assert (
        lines["pre-app-boot"] == f"pre-app-boot deploy v1b {everyone} lock=true runtime= kamal=v1b"
    )
    assert re.match(
        rf"^post-deploy deploy v1b {re.escape(everyone)} lock=false runtime=\d+ kamal=v1b$",
        lines["post-deploy"],
    )


def test_deploy_v2_under_load_loses_nothing(web_and_workers: DeployProject, lab: Any) -> None:
    h1, h2, h3 = lab.hosts[:3]
    web_and_workers.commit("v2")
    with Load([h1.address, h2.address]) as load:
        web_and_workers.run("deploy", "--version", "v2").ok()
    assert load.failed == 0, load.failures
    assert load.ok > 50 and set(load.bodies) == {"hello from demo v1b", "hello from demo v2"}
    assert serving(lab, [h1, h2]) == ["hello from demo v2", "hello from demo v2"]
    assert h3.run("docker ps --filter label=role=workers --format '{{.Names}}'").stdout.split() == [
        "demo-workers-v2"
    ]


def test_rollback_to_v1_serves_v1_everywhere(web_and_workers: DeployProject, lab: Any) -> None:
    h1, h2, h3 = lab.hosts[:3]
    with Load([h1.address, h2.address]) as load:
        web_and_workers.run("rollback", "v1").ok()
    assert load.failed == 0, load.failures
    assert serving(lab, [h1, h2]) == ["hello from demo v1", "hello from demo v1"]
    assert h3.run("docker ps --filter label=role=workers --format '{{.Names}}'").stdout.split() == [
        "demo-workers-v1"
    ]
    assert web_and_workers.run("app", "version", "-q").ok().stdout.split() == [
        f"[{h1.address}]",
        "v1",
        f"[{h2.address}]",
        "v1",
        f"[{h3.address}]",
        "v1",
    ]


def test_rollback_to_a_missing_version_touches_nothing(
    web_and_workers: DeployProject, lab: Any
) -> None:
    result = web_and_workers.run("rollback", "v0-never-deployed")
    assert result.exit_code == 1
    assert "The app version 'v0-never-deployed' is not available as a container" in result.stderr
    assert serving(lab, lab.hosts[:2]) == ["hello from demo v1", "hello from demo v1"]
    assert "There is no deploy lock" in web_and_workers.run("lock", "status").ok().stdout


def test_audit_shows_v1_v2_v1_booted_in_order_with_utc_times(
    web_and_workers: DeployProject, lab: Any
) -> None:
    lines = web_and_workers.run("audit").ok().stdout.splitlines()
    h1 = lab.hosts[0].address
    booted = [line for line in lines if line.startswith(f"[{h1}]") and "Booted app version" in line]
    assert [line.rsplit(" ", 1)[1] for line in booted] == ["v1", "v1b", "v2", "v1"]
    for line in booted:
        assert re.search(
            r"\] \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] \[[^]]+\] \[web\] Booted app version", line
        ), line


def test_a_broken_deploy_changes_nothing_that_serves(
    web_and_workers: DeployProject, lab: Any
) -> None:
    h1, h2, h3 = lab.hosts[:3]
    web_and_workers.run("deploy", "--version", "v2").ok()  # back to v2, then break v3
    hook_log(web_and_workers)
    web_and_workers.configure(
        {
            "web": [h1.address, h2.address],
            "workers": {"hosts": [h3.address], "cmd": "python3 /app/app.py worker"},
        },
        env={"clear": {"APP_NAME": "demo", "APP_BROKEN": "1"}},
        deploy_timeout=5,
    )
    with Load([h1.address, h2.address]) as load:
        result = web_and_workers.run("deploy", "--version", "v3")
    assert result.exit_code == 1
    assert load.failed == 0, load.failures
    assert (
        "demo-web-v3 failed" in result.stderr
        and "health:" in result.stderr
        and "proxy log" in result.stderr
    )
    assert "not booting workers" in result.stderr
    assert serving(lab, [h1, h2]) == ["hello from demo v2", "hello from demo v2"]
    running = h3.run("docker ps --filter label=role=workers --format '{{.Names}}'").stdout.split()
    assert running == ["demo-workers-v2"]
    for host in (h1, h2):
        assert "demo-web-v3" not in host.run("docker ps --format '{{.Names}}'").stdout
    assert "There is no deploy lock" in web_and_workers.run("lock", "status").ok().stdout
    names = [line.split()[0] for line in hook_log(web_and_workers)]
    assert "post-deploy" not in names and "pre-deploy" in names


def test_a_hooks_py_veto_stops_before_any_host_changes(
    web_and_workers: DeployProject, lab: Any
) -> None:
    h1, h2 = lab.hosts[:2]
    before = [
        host.run("docker ps -a --format '{{.Names}} {{.State}} {{.ID}}'").stdout
        for host in (h1, h2)
    ]
    hooks_py = web_and_workers.path / ".shipyard" / "hooks.py"
    hooks_py.write_text(
        "from shipyard.core.records import Veto\n\n"
        "def shipyard_pre_deploy(ctx):\n"
        "    return Veto('release freeze: no deploys on Fridays')\n"
    )
    try:
        result = web_and_workers.run("deploy", "--version", "v2", "-P")
    finally:
        hooks_py.unlink()
    assert result.exit_code == 1
    assert (
        "Hook `pre-deploy` in plugin 'project' aborted: release freeze: no deploys on Fridays"
        in result.stderr
    )
    after = [
        host.run("docker ps -a --format '{{.Names}} {{.State}} {{.ID}}'").stdout
        for host in (h1, h2)
    ]
    assert [set(a.splitlines()) for a in after] == [set(b.splitlines()) for b in before]
    assert "There is no deploy lock" in web_and_workers.run("lock", "status").ok().stdout


def test_a_red_ci_status_vetoes_the_deploy(
    web_and_workers: DeployProject, lab: Any, tmp_path: Path
) -> None:
    import http.server
    import json
    import threading

    class Status(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "state": "failure",
                    "sha": "x" * 40,
                    "total_count": 1,
                    "statuses": [
                        {"context": "ci/tests", "state": "failure", "description": "3 tests failed"}
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h1, h2, h3 = lab.hosts[:3]
    web_and_workers.configure(
        {
            "web": [h1.address, h2.address],
            "workers": {"hosts": [h3.address], "cmd": "python3 /app/app.py worker"},
        },
        **{
            "x-shipyard": {
                "ci_check": {"url": f"http://127.0.0.1:{server.server_port}/{{version}}/status"}
            }
        },
    )
    try:
        result = web_and_workers.run("deploy", "--version", "v2", "-P")
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert (
        "plugin 'ci_check' aborted: CI status for xxxxxxx is failure: ci/tests (3 tests failed)"
        in result.stderr
    )
    assert serving(lab, [h1, h2]) == ["hello from demo v2", "hello from demo v2"]
