"""A real third-party plugin: built as a wheel in a temp dir, pip-installed into this
environment, found through the `shipyard` entry-point group, and switched off by name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shipyard.core.errors import HookAbort
from shipyard.core.testing import MINIMAL_CONFIG, Project

HELLO_PLUGIN = """
import os

import click

from shipyard.core import hookimpl
from shipyard.core.cli.runner import command
from shipyard.core.records import Veto


@hookimpl
def shipyard_pre_deploy(ctx):
    if os.environ.get("HELLO_VETO"):
        return Veto("hello says no: " + os.environ["HELLO_VETO"])
    return None


@command("hello", help="Say hello from an installed plugin.")
@click.option("--name", default="world")
def hello(ctx, name):
    ctx.output.result(f"hello {name} from {ctx.command}")


@hookimpl
def shipyard_commands(cli):
    cli.add_command(hello)
"""

BROKEN_PLUGIN = "raise ImportError('the broken plugin is broken')\n"


def _build_and_install(tmp: Path, dist: str, module: str, source: str) -> None:
    project = tmp / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.2.3"

            [project.entry-points.shipyard]
            {module.removeprefix("shipyard_")} = "{module}"

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project)],
        check=True,
    )
    wheel = next(wheels.glob(f"{dist.replace('-', '_')}-1.2.3-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True
    )


def _uninstall(dist: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "uninstall", "-y", dist], check=True)


@contextmanager
def installed(tmp: Path, dist: str, module: str, source: str) -> Iterator[None]:
    _build_and_install(tmp, dist, module, source)
    try:
        yield
    finally:
        _uninstall(dist)


@pytest.fixture(scope="module")
def hello_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with installed(
        tmp_path_factory.mktemp("hello"), "shipyard-hello", "shipyard_hello", HELLO_PLUGIN
    ):
        yield


@pytest.fixture
def autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIPYARD_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.mark.usefixtures("hello_plugin", "autoload")
class TestInstalledPlugin:
    def test_listed_with_its_distribution_version_and_hooks(
        self, shipyard_project: Project
    ) -> None:
        lines = shipyard_project.run("plugins").assert_ok().stdout.splitlines()
        row = next(line for line in lines if line.startswith("hello "))
        assert row.split() == ["hello", "entry", "point", "1.2.3", "commands,", "pre_deploy"]

    def test_adds_a_cli_command(self, shipyard_project: Project) -> None:
        assert (
            shipyard_project.run("hello", "--name", "ship").assert_ok().stdout
            == "hello ship from hello\n"
        )
        help_text = shipyard_project.run("--help").assert_ok().stdout
        assert "Plugin commands" in help_text and "Say hello from an installed plugin." in help_text

    def test_its_pre_deploy_veto_aborts_and_names_the_plugin(
        self, shipyard_project: Project, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shipyard_project.write_config(MINIMAL_CONFIG)
        monkeypatch.setenv("HELLO_VETO", "tests are red")
        ctx = shipyard_project.context("deploy", version="v1")
        with pytest.raises(HookAbort) as aborted:
            ctx.hooks.pre_deploy(ctx)
        assert (
            str(aborted.value)
            == "Hook `pre-deploy` in plugin 'hello' aborted: hello says no: tests are red"
        )

    def test_no_plugin_turns_it_off(
        self, shipyard_project: Project, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        listing = shipyard_project.run("plugins", "--no-plugin", "hello").assert_ok().stdout
        assert "hello" not in listing
        missing = shipyard_project.run("--no-plugin", "hello", "hello")
        assert missing.exit_code == 2 and "No such command 'hello'" in missing.stderr
        shipyard_project.write_config(MINIMAL_CONFIG)
        monkeypatch.setenv("HELLO_VETO", "x")
        ctx = shipyard_project.context("deploy", version="v1", no_plugins=("hello",))
        ctx.hooks.pre_deploy(ctx)  # no veto: the plugin is not loaded

    def test_environment_variables_turn_it_off(self, shipyard_project: Project) -> None:
        for env in (
            {"SHIPYARD_DISABLE_PLUGINS": "other,hello"},
            {"SHIPYARD_DISABLE_PLUGIN_AUTOLOAD": "1"},
        ):
            assert "hello" not in shipyard_project.run("plugins", env=env).assert_ok().stdout


@pytest.mark.usefixtures("autoload")
def test_a_broken_installed_plugin_names_itself_and_its_distribution(
    shipyard_project: Project, tmp_path: Path
) -> None:
    with installed(tmp_path, "shipyard-broken", "shipyard_broken", BROKEN_PLUGIN):
        result = shipyard_project.run("plugins")
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            "Error: installed plugin 'broken' (from shipyard_broken 1.2.3) failed to load: "
            "ImportError: the broken plugin is broken. Disable it with --no-plugin broken "
            "or SHIPYARD_DISABLE_PLUGINS=broken"
        )
        assert shipyard_project.run("plugins", "--no-plugin", "broken").exit_code == 0
