"""`.shipyard/hooks.py`: the project's own Python plugin, registered last."""

from __future__ import annotations

import pytest

from shipyard.core.errors import HookAbort, PluginError
from shipyard.core.testing import MINIMAL_CONFIG, HookRecorder, Project


@pytest.fixture
def project(shipyard_project: Project) -> Project:
    shipyard_project.write_config(MINIMAL_CONFIG)
    return shipyard_project


def test_a_veto_returned_from_pre_deploy_aborts(project: Project) -> None:
    def hooks() -> None:
        from shipyard.core.records import Veto

        def shipyard_pre_deploy(ctx):  # type: ignore[no-untyped-def]
            return Veto(f"not today, {ctx.version}")

    project.write_hooks_py(hooks)
    ctx = project.context("deploy", version="v7")
    with pytest.raises(HookAbort) as aborted:
        ctx.hooks.pre_deploy(ctx)
    assert str(aborted.value) == "Hook `pre-deploy` in plugin 'project' aborted: not today, v7"


def test_raising_hook_abort_aborts_with_the_plugin_named(project: Project) -> None:
    project.write_hooks_py(
        """
        from shipyard.core import hookimpl
        from shipyard.core.errors import HookAbort

        @hookimpl
        def shipyard_pre_deploy(ctx):
            raise HookAbort("change freeze until Monday")
        """
    )
    ctx = project.context("deploy", version="v1")
    with pytest.raises(
        HookAbort,
        match=r"^Hook `pre-deploy` in plugin 'project' aborted: change freeze until Monday$",
    ):
        ctx.hooks.pre_deploy(ctx)


def test_a_bug_in_a_hook_is_reported_as_a_plugin_error(project: Project) -> None:
    project.write_hooks_py("def shipyard_pre_deploy(ctx):\n    return 1 / 0\n")
    ctx = project.context("deploy", version="v1")
    with pytest.raises(
        PluginError, match=r"plugin 'project' failed in hook `pre-deploy`: ZeroDivisionError"
    ):
        ctx.hooks.pre_deploy(ctx)


def test_it_has_the_final_say_over_built_ins(project: Project) -> None:
    project.write_hooks_py(
        """
        class Vault:
            def fetch(self, secrets, account, from_):
                return {name: "from hooks.py" for name in secrets}

        def shipyard_secrets_adapter(name):
            return Vault() if name == "test" else None
        """
    )
    result = project.run("secrets", "fetch", "-a", "test", "TOKEN").assert_ok()
    assert result.stdout.strip() == '{"TOKEN": "from hooks.py"}'
    assert (
        project.run("-H", "secrets", "fetch", "-a", "test", "TOKEN").assert_ok().stdout.strip()
        == '{"TOKEN": "NEKOT"}'
    )


def test_an_import_error_names_file_and_line(project: Project) -> None:
    project.write_hooks_py("import os\n\nVALUE = os.environ['DEFINITELY_NOT_SET_ANYWHERE']\n")
    result = project.run("plugins")
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == "Error: .shipyard/hooks.py:3: KeyError: 'DEFINITELY_NOT_SET_ANYWHERE'"
    )


def test_a_syntax_error_names_file_and_line(project: Project) -> None:
    project.write_hooks_py("def shipyard_pre_deploy(ctx)\n    pass\n")
    result = project.run("plugins")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: .shipyard/hooks.py:1: SyntaxError: expected ':'"


def test_a_misspelt_hook_is_a_warning_naming_the_file(project: Project) -> None:
    project.write_hooks_py("def shipyard_pre_deplyo(ctx):\n    pass\n")
    result = project.run("plugins").assert_ok()
    assert result.stderr.strip() == (
        ".shipyard/hooks.py: unknown hook shipyard_pre_deplyo (misspelt? `shipyard docs hooks` lists them); "
        "it will never be called"
    )


def test_listed_as_a_local_file_and_skipped_by_skip_hooks(project: Project) -> None:
    project.write_hooks_py("def shipyard_post_deploy(ctx, runtime):\n    pass\n")
    lines = project.run("plugins").assert_ok().stdout.splitlines()
    assert any(line.split() == ["project", "local", "file", "-", "post_deploy"] for line in lines)
    assert "project" not in project.run("plugins", "-H").assert_ok().stdout


def test_recorder_sees_command_hooks_in_order(
    project: Project, shipyard_hook_recorder: HookRecorder
) -> None:
    project.write_hooks_py(
        "def shipyard_pre_command(ctx):\n    ctx.output.info('pre ' + ctx.command)\n"
    )
    result = project.run("version").assert_ok()
    assert result.stdout.splitlines()[0] == "pre version"
    assert shipyard_hook_recorder.names() == [
        "configure",
        "pre_command",
        "post_command",
        "unconfigure",
    ]
    outcome = shipyard_hook_recorder.getcalls("post_command")[0].kwargs["outcome"]
    assert outcome.exit_code == 0 and outcome.error is None


def test_post_command_sees_failures(project: Project, shipyard_hook_recorder: HookRecorder) -> None:
    assert project.run("upgrade").exit_code == 2
    outcome = shipyard_hook_recorder.getcalls("post_command")[0].kwargs["outcome"]
    assert outcome.exit_code == 2 and str(outcome.error) == "not implemented yet: upgrade"
