"""Two apps share one proxy per host, routed by host name; removing one leaves the other
serving and the proxy running; removing the last one removes the proxy."""

from __future__ import annotations

from typing import Any

from deploy_helpers import DeployProject, get, reset_hosts


def test_two_apps_one_proxy(lab: Any, proxy_image: str, tmp_path: Any) -> None:
    hosts = lab.hosts[:2]
    reset_hosts(lab)
    apps = {}
    for name in ("alpha", "beta"):
        project = DeployProject(tmp_path / name, lab, service=name)
        project.configure([h.address for h in hosts], proxy={"host": f"{name}.example.test"})
        project.run("setup", "--version", "v1").ok()
        apps[name] = project
    for host in hosts:
        for name in apps:
            assert get(host.address, host=f"{name}.example.test") == (
                200,
                f"hello from {name} v1 on {host.address}\n",
            )
        assert host.run("docker ps --filter name=^shipyard-proxy$ -q").stdout.strip()
    apps["alpha"].run("remove", "-y").ok()
    for host in hosts:
        assert get(host.address, host="alpha.example.test")[0] == 404
        assert get(host.address, host="beta.example.test")[0] == 200
        assert host.run("docker ps --filter name=^shipyard-proxy$ -q").stdout.strip(), (
            "proxy must stay for beta"
        )
        assert "alpha" not in host.run("docker ps -a --format '{{.Names}}'").stdout
    apps["beta"].run("remove", "-y").ok()
    for host in hosts:
        assert host.run("docker ps -a --filter name=^shipyard-proxy$ -q").stdout.strip() == ""
        assert host.run("docker ps -aq").stdout.strip() == ""
