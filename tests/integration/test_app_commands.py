"""`app` and `proxy` commands on a deployed app: exec, logs, containers, maintenance with
a custom error page, live, stop/start, proxy reboot keeping routes, details."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_helpers import DeployProject, get, reset_hosts


@pytest.fixture(scope="module")
def deployed(lab: Any, proxy_image: str, tmp_path_factory: pytest.TempPathFactory) -> DeployProject:
    reset_hosts(lab)
    project = DeployProject(tmp_path_factory.mktemp("appcmds") / "demo", lab)
    pages = project.path / "error_pages"
    pages.mkdir()
    (pages / "503.html").write_text("<h1>Back soon</h1><p>{{ .Message }}</p>\n")
    project.commit("error pages")
    project.configure([h.address for h in lab.hosts[:2]], error_pages_path="error_pages")
    project.run("setup", "--version", "a1").ok()
    return project


def test_exec_in_a_new_container_and_reused(deployed: DeployProject, lab: Any) -> None:
    fresh = deployed.run("app", "exec", "-q", "sh -c 'echo $APP_NAME'").ok().stdout.split()
    assert fresh == [f"[{lab.hosts[0].address}]", "demo", f"[{lab.hosts[1].address}]", "demo"]
    reused = (
        deployed.run("app", "exec", "-q", "--reuse", "-p", "printenv", "SHIPYARD_CONTAINER_NAME")
        .ok()
        .stdout
    )
    assert reused.strip().endswith("demo-web-a1")


def test_logs_containers_images_and_details(deployed: DeployProject, lab: Any) -> None:
    get(lab.hosts[0].address, path="/from-the-logs-test")
    logs = deployed.run("app", "logs", "-q", "-p", "-g", "from-the-logs-test").ok().stdout
    assert "GET /from-the-logs-test" in logs
    assert deployed.run("app", "containers", "-q").ok().stdout.count("demo-web-a1") == 2
    assert deployed.run("app", "images", "-q").ok().stdout.count("localhost:5555/demo") >= 2
    details = deployed.run("details", "-q").ok().stdout
    assert details.count("Proxy:") == 2 and details.count(" shipyard-proxy\n") == 2
    assert details.count("demo-web-a1") == 2


def test_maintenance_serves_the_custom_page_then_live(deployed: DeployProject, lab: Any) -> None:
    host = lab.hosts[0].address
    deployed.run("app", "maintenance", "--message", "upgrading the database").ok()
    status, body = get(host)
    assert status == 503 and "Back soon" in body and "upgrading the database" in body
    assert get(host, path="/up")[0] == 200  # the health path answers while stopped
    deployed.run("app", "live").ok()
    assert get(host) == (200, f"hello from demo a1 on {host}\n")


def test_stop_then_start(deployed: DeployProject, lab: Any) -> None:
    host = lab.hosts[0].address
    deployed.run("app", "stop").ok()
    assert get(host)[0] == 404
    deployed.run("app", "start").ok()
    assert get(host) == (200, f"hello from demo a1 on {host}\n")


def test_proxy_reboot_restores_routes_without_a_redeploy(deployed: DeployProject, lab: Any) -> None:
    result = deployed.run("proxy", "reboot", "-y", "--rolling").ok()
    assert result.stdout.count("Booted proxy") == 2
    for host in lab.hosts[:2]:
        assert get(host.address) == (200, f"hello from demo a1 on {host.address}\n")
    logs = deployed.run("proxy", "logs", "-q", "-p", "-n", "200").ok().stdout
    assert "Server started" in logs
