"""Pure pieces of the deploy: boot groups, prune plans, proxy deploy flags, barrier."""

from __future__ import annotations

import threading

import pytest

from shipyard.core.errors import HostError
from shipyard.core.lifecycle import PrimaryBarrier
from shipyard.core.testing import Project
from shipyard.plugins import proxy
from shipyard.plugins.prune import plan
from shipyard.plugins.rolling_boot import group_size


@pytest.mark.parametrize(
    ("limit", "all_hosts", "hosts", "size"),
    [(None, 5, 5, 5), (2, 5, 5, 2), ("25%", 8, 8, 2), ("10%", 3, 3, 1), ("50%", 10, 4, 5)],
)
def test_group_size_follows_kamal(
    limit: int | str | None, all_hosts: int, hosts: int, size: int
) -> None:
    assert group_size(limit, all_hosts, hosts) == size


def test_boot_plan_hook_groups_hosts(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {"service": "a", "image": "a", "servers": ["h1", "h2", "h3"], "boot": {"limit": 2}}
    )
    ctx = shipyard_project.context("deploy", version="v1")
    assert ctx.hooks.boot_plan(ctx, ["h1", "h2", "h3"]) == [["h1", "h2"], ["h3"]]


def test_prune_plan_keeps_retained_stopped_containers_and_their_images() -> None:
    listing = (
        "\n".join(
            [
                "c8 running r/app:v8",
                "c7 exited r/app:v7",
                "c6 exited r/app:v6",
                "c5 exited r/app:v5",
                "c4 exited r/app:v4",
                "c3 exited r/app:v3",
                "c2 exited r/app:v2",
                "c1 dead r/app:v1",
            ]
        )
        + "\n---8<---\n"
        + "\n".join(
            [
                "r/app:v8",
                "r/app:v7",
                "r/app:v6",
                "r/app:v5",
                "r/app:v4",
                "r/app:v3",
                "r/app:v2",
                "r/app:v1",
                "r/app:latest",
                "r/app:latest-staging",
                "r/app:<none>",
            ]
        )
    )
    containers, images = plan(listing, retain=5)
    assert containers == ["c2", "c1"]
    assert images == ["r/app:v2", "r/app:v1"]


def test_proxy_deploy_flags_follow_kamals_order(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {
            "service": "app",
            "image": "app",
            "servers": ["h1"],
            "deploy_timeout": 20,
            "drain_timeout": 5,
            "proxy": {
                "host": "a.example.com,b.example.com",
                "app_port": 3000,
                "path_prefix": "/api",
                "buffering": {"requests": True, "responses": False, "max_request_body": 1000},
                "response_timeout": 15,
                "forward_headers": True,
            },
        }
    )
    ctx = shipyard_project.context("deploy", version="v1")
    role = ctx.config.role("web")
    assert role.proxy is not None
    assert proxy.deploy_flags(ctx, role, role.proxy, "abcdef123456") == [
        "--target=abcdef123456:3000",
        "--host=a.example.com",
        "--host=b.example.com",
        "--deploy-timeout=20s",
        "--drain-timeout=5s",
        "--health-check-interval=1s",
        "--health-check-timeout=5s",
        "--health-check-path=/up",
        "--target-timeout=15s",
        "--buffer-requests=true",
        "--buffer-responses=false",
        "--max-request-body=1000",
        "--path-prefix=/api",
        "--forward-headers=true",
        "--log-request-header=Cache-Control",
        "--log-request-header=Last-Modified",
        "--log-request-header=User-Agent",
    ]


def test_proxy_run_publishes_ports_and_mounts_state(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {
            "service": "app",
            "image": "app",
            "servers": ["h1"],
            "proxy": {
                "run": {
                    "registry": "r:5000",
                    "version": "v9",
                    "http_port": 8080,
                    "metrics_port": 9090,
                }
            },
        }
    )
    ctx = shipyard_project.context("deploy", version="v1")
    argv = proxy.run_argv(ctx.config, "/root")
    assert argv[-4:] == [
        "r:5000/shipyard/shipyard-proxy:v9",
        "shipyard-proxy",
        "run",
        "--metrics-port=9090",
    ]
    assert argv[argv.index("--publish") : argv.index("--publish") + 2] == ["--publish", "8080:80"]
    assert "/root/.shipyard/proxy/apps-config:/home/kamal-proxy/.apps-config" in argv


def test_barrier_lets_other_roles_through_only_after_a_healthy_primary() -> None:
    barrier = PrimaryBarrier("web", required=True)
    passed: list[str] = []
    waiter = threading.Thread(
        target=lambda: (barrier.wait("h3", "workers", 30), passed.append("workers"))
    )
    waiter.start()
    assert passed == []
    barrier.open()
    waiter.join(10)
    assert passed == ["workers"]
    closed = PrimaryBarrier("web", required=True)
    closed.close()
    with pytest.raises(HostError, match="first web container is unhealthy, not booting workers"):
        closed.wait("h3", "workers", 1)
