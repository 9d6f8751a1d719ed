"""Shell hooks: Kamal's executable scripts, run at their lifecycle points with
SHIPYARD_* (and KAMAL_*) variables; a non-zero exit aborts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipyard.core.errors import HookFailed
from shipyard.core.hookspecs import LIFECYCLE_EVENTS, shell_hook_name
from shipyard.core.testing import FakeTransportKit, Project
from shipyard.plugins import shell_hooks

CONFIG = {"service": "shop", "image": "acme/shop", "servers": {"web": ["w1", "w2"], "jobs": ["j1"]}}
# pre-build also runs the build plugin's local checks (a reachable Docker engine); these
# tests are about the shell hooks alone, on machines without Docker too.
WITHOUT_BUILDER = ("docker_build",)
DUMP_ENV = "#!/bin/sh\nenv | grep -E '^(SHIPYARD|KAMAL)_|^DB_PASSWORD=' | sort > \"$DUMP_TO\"\n"


@pytest.fixture
def project(shipyard_project: Project) -> Project:
    shipyard_project.write_config(CONFIG)
    shipyard_project.write_secrets("DB_PASSWORD=hunter2-secret\n")
    shipyard_project.git_init()
    return shipyard_project


def dumped(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_pre_deploy_gets_every_variable_kamal_twins_and_secrets(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_shell_hook("pre-deploy", DUMP_ENV)
    monkeypatch.setenv("DUMP_TO", str(tmp_path / "env"))
    ctx = project.context("deploy", version="0123456789abcdef", destination=None)
    ctx.hooks.pre_deploy(ctx)
    env = dumped(tmp_path / "env")
    assert env["SHIPYARD_SERVICE"] == "shop"
    assert env["SHIPYARD_VERSION"] == "0123456789abcdef"
    assert env["SHIPYARD_SERVICE_VERSION"] == "shop@0123456"
    assert env["SHIPYARD_HOSTS"] == "w1,w2,j1"
    assert env["SHIPYARD_ROLES"] == "web,jobs"
    assert env["SHIPYARD_COMMAND"] == "deploy"
    assert env["SHIPYARD_LOCK"] == "false"
    assert env["SHIPYARD_PERFORMER"]
    assert env["SHIPYARD_RECORDED_AT"].endswith("Z") and "T" in env["SHIPYARD_RECORDED_AT"]
    assert "SHIPYARD_SUBCOMMAND" not in env and "SHIPYARD_DESTINATION" not in env
    assert env["DB_PASSWORD"] == "hunter2-secret"
    for key, value in env.items():
        if key.startswith("SHIPYARD_") and key != "SHIPYARD_DISABLE_PLUGIN_AUTOLOAD":
            assert env["KAMAL_" + key.removeprefix("SHIPYARD_")] == value


def test_group_hooks_see_their_group_and_no_secrets(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_shell_hook("pre-app-boot", DUMP_ENV)
    monkeypatch.setenv("DUMP_TO", str(tmp_path / "env"))
    ctx = project.context("app", "boot", version="v1", roles=("web",))
    ctx.hooks.pre_app_boot(ctx, ["w2"])
    env = dumped(tmp_path / "env")
    assert (env["SHIPYARD_HOSTS"], env["SHIPYARD_ROLES"], env["SHIPYARD_SUBCOMMAND"]) == (
        "w2",
        "web",
        "boot",
    )
    assert "DB_PASSWORD" not in env


def test_post_deploy_gets_the_runtime_and_destination(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_config({"servers": ["s1"]}, destination="staging")
    project.write_secrets("DB_PASSWORD=staging-pw\n", destination="staging")
    project.write_shell_hook("post-deploy", DUMP_ENV)
    monkeypatch.setenv("DUMP_TO", str(tmp_path / "env"))
    ctx = project.context("deploy", version="v1", destination="staging")
    ctx.hooks.post_deploy(ctx, 12.6)
    env = dumped(tmp_path / "env")
    assert (env["SHIPYARD_RUNTIME"], env["SHIPYARD_DESTINATION"], env["DB_PASSWORD"]) == (
        "13",
        "staging",
        "staging-pw",
    )


def test_a_non_zero_exit_aborts_and_shows_the_output(project: Project) -> None:
    project.write_shell_hook(
        "pre-build", "#!/bin/sh\necho 'checking tree'\necho 'tree is dirty' >&2\nexit 3\n"
    )
    ctx = project.context("build", "push", version="v1", no_plugins=WITHOUT_BUILDER)
    with pytest.raises(HookFailed) as failed:
        ctx.hooks.pre_build(ctx)
    assert str(failed.value) == "Hook `pre-build` failed (exit 3):\nchecking tree\ntree is dirty"


def test_skip_hooks_skips_them(project: Project, tmp_path: Path) -> None:
    project.write_shell_hook("pre-build", "#!/bin/sh\nexit 1\n")
    ctx = project.context(
        "build", "push", version="v1", skip_hooks=True, no_plugins=WITHOUT_BUILDER
    )
    ctx.hooks.pre_build(ctx)


def test_user_hooks_in_home_run_after_the_projects(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "order"
    project.write_shell_hook("pre-build", f"#!/bin/sh\necho project >> {log}\n")
    user_hook = Path(os.environ["HOME"]) / ".shipyard/hooks/pre-build"
    user_hook.parent.mkdir(parents=True)
    user_hook.write_text(f"#!/bin/sh\necho user >> {log}\n")
    user_hook.chmod(0o755)
    ctx = project.context("build", "push", version="v1", no_plugins=WITHOUT_BUILDER)
    ctx.hooks.pre_build(ctx)
    assert log.read_text().split() == ["project", "user"]


def test_a_kamal_project_uses_dot_kamal_hooks_and_secrets(
    shipyard_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipyard_project.write_config(CONFIG)
    shipyard_project.write(".kamal/secrets", "DB_PASSWORD=from-kamal\n")
    shipyard_project.write_shell_hook("pre-deploy", DUMP_ENV, directory=".kamal/hooks")
    monkeypatch.setenv("DUMP_TO", str(tmp_path / "env"))
    ctx = shipyard_project.context("deploy", version="v1")
    ctx.hooks.pre_deploy(ctx)
    env = dumped(tmp_path / "env")
    assert env["DB_PASSWORD"] == "from-kamal" and env["KAMAL_VERSION"] == "v1"


def test_a_non_executable_hook_is_skipped_with_a_warning(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = project.write(".shipyard/hooks/pre-build", "#!/bin/sh\nexit 1\n")
    hook.chmod(0o644)
    ctx = project.context("build", "push", version="v1", no_plugins=WITHOUT_BUILDER)
    ctx.hooks.pre_build(ctx)
    assert "Hook `pre-build` at" in capsys.readouterr().err


def test_pre_connect_runs_once_before_the_first_connection(
    project: Project, tmp_path: Path, shipyard_fake_transport: FakeTransportKit
) -> None:
    log = tmp_path / "connects"
    project.write_shell_hook("pre-connect", f"#!/bin/sh\necho connect >> {log}\n")
    ctx = project.context("server", "exec", version="v1")
    for host in ("w1", "w2", "w1"):
        ctx.connections.get(host).run(["true"])
    assert log.read_text().split() == ["connect"]
    assert shipyard_fake_transport.commands == {"w1": [("true",), ("true",)], "w2": [("true",)]}


def test_every_lifecycle_event_has_a_bridge() -> None:
    for event in LIFECYCLE_EVENTS:
        assert callable(getattr(shell_hooks, f"shipyard_{event}")), event
    assert [shell_hook_name(e) for e in LIFECYCLE_EVENTS][:4] == [
        "pre-connect",
        "pre-build",
        "post-push",
        "pre-deploy",
    ]


def test_plugins_lists_shell_hooks(project: Project) -> None:
    project.write_shell_hook("post-deploy", "#!/bin/sh\n")
    lines = project.run("plugins").assert_ok().stdout.splitlines()
    assert any(line.split() == ["post-deploy", "shell", "-", "post_deploy"] for line in lines)
