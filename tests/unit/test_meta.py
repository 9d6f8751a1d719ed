"""Rules about the code base itself, checked so they cannot rot."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from shipyard.core import hookspecs
from shipyard.core.plugins import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parents[2]
SPECS = hookspecs._all_specs()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hookspec_says_when_it_runs_and_what_a_result_means(name: str) -> None:
    doc = " ".join((SPECS[name].__doc__ or "").split())
    assert len(doc) >= 100, f"{name} needs a real docstring"
    firstresult = SPECS[name].shipyard_spec.get("firstresult")
    if firstresult:
        assert "Stops at first non-None result" in doc, name
    else:
        assert re.search(r"Return value ignored|Return a|Return None|returning", doc), name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hookspec_is_documented_in_contributing(name: str) -> None:
    assert name.removeprefix("shipyard_") in (ROOT / "CONTRIBUTING.md").read_text(), name


def test_every_builtin_plugin_is_its_own_module() -> None:
    for name in BUILTIN_PLUGINS:
        assert (ROOT / "plugins" / f"{name}.py").is_file(), name


def test_every_package_folder_is_installed_under_the_shipyard_namespace() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["setuptools"]["packages"])
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    found = set()
    for top, package in (
        ("core", "shipyard.core"),
        ("plugins", "shipyard.plugins"),
        ("proxy", "shipyard.proxy"),
        ("templates", "shipyard.templates"),
    ):
        assert mapping[package] == top
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top)
            found.add(".".join([package, *relative.parts]))
    assert found == packages
    assert not any(p.split(".")[0] in ("core", "plugins") for p in packages)


def in_fresh_interpreter(code: str) -> str:
    """What ``code`` prints, run by a new Python (so nothing is imported yet)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_cli_start_up_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from shipyard.core.cli.main import cli; "
        "heavy = {'pluggy', 'pydantic', 'yaml', 'jinja2', 'paramiko', 'docker', 'rich', 'importlib.metadata'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    assert in_fresh_interpreter(code) == "[]"


def test_loading_the_builtin_plugins_imports_no_heavy_library() -> None:
    code = (
        "import sys, pathlib; from shipyard.core.plugins import ShipyardPluginManager; "
        "ShipyardPluginManager().load(project_dir=pathlib.Path('.'), autoload=False); "
        "heavy = {'pydantic', 'yaml', 'jinja2', 'paramiko', 'docker', 'rich', 'invoke'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    assert in_fresh_interpreter(code) == "[]"


def test_paramiko_imports_without_invoke_or_importlib_metadata() -> None:
    # Both cost start-up time on every deploy; paramiko still knows its own version, and
    # importlib.metadata still works for whoever imports it afterwards.
    code = (
        "import sys, types; from shipyard.plugins._ssh_import import paramiko; "
        "loaded = [n for n in ('invoke', 'importlib.metadata') if type(sys.modules.get(n)) is types.ModuleType]; "
        "import importlib.metadata; "
        "print(loaded, paramiko.__version__ == importlib.metadata.version('paramiko'))"
    )
    assert in_fresh_interpreter(code) == "[] True"
