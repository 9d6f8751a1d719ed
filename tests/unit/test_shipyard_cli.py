"""The command line: Kamal's tree, global options anywhere, honest not-implemented
commands, init → config, docs, tracing and plugin switches."""

from __future__ import annotations

import json
import re

import pytest

from shipyard.core.cli.tree import TOP_LEVEL
from shipyard.core.testing import MINIMAL_CONFIG, Project

KAMAL_TOP_LEVEL = {
    "accessory",
    "app",
    "audit",
    "build",
    "config",
    "deploy",
    "details",
    "docs",
    "init",
    "lock",
    "proxy",
    "prune",
    "redeploy",
    "registry",
    "remove",
    "rollback",
    "secrets",
    "server",
    "setup",
    "upgrade",
    "version",
}
KAMAL_SUBCOMMANDS = {
    "app": {
        "boot",
        "start",
        "stop",
        "details",
        "exec",
        "containers",
        "images",
        "logs",
        "stale_containers",
        "version",
        "maintenance",
        "live",
        "remove",
    },
    "build": {"deliver", "push", "pull", "details", "create", "remove", "dev"},
    "proxy": {"boot", "reboot", "start", "stop", "restart", "details", "logs", "remove"},
    "accessory": {
        "boot",
        "reboot",
        "start",
        "stop",
        "restart",
        "details",
        "exec",
        "logs",
        "remove",
        "upgrade",
    },
    "lock": {"acquire", "release", "status"},
    "prune": {"all", "containers", "images"},
    "registry": {"setup", "remove", "login", "logout"},
    "secrets": {"fetch", "extract", "print"},
    "server": {"exec", "bootstrap"},
}
GLOBAL_FLAGS = [
    "-v, --verbose",
    "-q, --quiet",
    "--version VERSION",
    "-p, --primary",
    "-h, --hosts HOSTS",
    "-r, --roles ROLES",
    "-c, --config-file PATH",
    "-d, --destination NAME",
    "-H, --skip-hooks",
    "--json",
    "--trace",
    "--no-plugin NAME",
]


def test_help_lists_kamals_command_tree(shipyard_project: Project) -> None:
    help_text = shipyard_project.run("--help").assert_ok().stdout
    listed = set(re.findall(r"^  (\w+)  ", help_text.split("Commands:")[1], re.M))
    assert listed == KAMAL_TOP_LEVEL | {"plugins", "broadcast"}
    for flag in GLOBAL_FLAGS:
        assert flag in help_text


@pytest.mark.parametrize("group", sorted(KAMAL_SUBCOMMANDS))
def test_each_group_has_kamals_subcommands(shipyard_project: Project, group: str) -> None:
    help_text = shipyard_project.run(group, "--help").assert_ok().stdout
    listed = set(re.findall(r"^  (\w+)  ", help_text.split("Commands:")[1], re.M))
    assert listed == KAMAL_SUBCOMMANDS[group]


def test_tree_table_matches_the_modules() -> None:
    import click

    from shipyard.core.cli.main import cli

    for name in TOP_LEVEL:
        command = cli.get_command(click.Context(cli), name)
        assert command is not None and command.name == name


def test_planned_commands_exit_2_without_pretending(shipyard_project: Project) -> None:
    shipyard_project.write_config(MINIMAL_CONFIG)
    for argv, name in (
        (["upgrade"], "upgrade"),
        (["accessory", "boot", "all"], "accessory boot"),
        (["registry", "setup"], "registry setup"),
    ):
        result = shipyard_project.run(*argv)
        assert (result.exit_code, result.stderr, result.stdout) == (
            2,
            f"not implemented yet: {name}\n",
            "",
        )


def test_global_options_work_before_and_after_the_command(shipyard_project: Project) -> None:
    shipyard_project.write_config(MINIMAL_CONFIG)
    shipyard_project.write_config({"servers": ["s1"]}, destination="staging")
    for argv in (
        ["-d", "staging", "config"],
        ["config", "-d", "staging"],
        ["config", "--destination=staging"],
    ):
        assert "- s1" in shipyard_project.run(*argv).assert_ok().stdout


def test_init_then_config_prints_merged_yaml_with_secrets_redacted(
    shipyard_project: Project,
) -> None:
    init = shipyard_project.run("init").assert_ok().stdout
    assert "Created configuration file in config/deploy.yml" in init
    samples = sorted(p.name for p in (shipyard_project.path / ".shipyard/hooks").iterdir())
    assert len(samples) == 11 and all(name.endswith(".sample") for name in samples)
    assert (shipyard_project.path / ".shipyard/hooks.py.sample").is_file()
    result = shipyard_project.run(
        "config", env={"APP_SECRET_KEY": "very-secret-value-123"}
    ).assert_ok()
    assert "service: my-app" in result.stdout
    assert "APP_SECRET_KEY: '[REDACTED]'" in result.stdout
    assert "very-secret-value-123" not in result.stdout + result.stderr


def test_init_never_overwrites(shipyard_project: Project) -> None:
    shipyard_project.write_config(MINIMAL_CONFIG)
    result = shipyard_project.run("init").assert_ok()
    assert "already exists" in result.stdout
    assert "service: app" in (shipyard_project.path / "config/deploy.yml").read_text()


def test_hooks_py_sample_is_a_working_plugin(shipyard_project: Project) -> None:
    shipyard_project.run("init").assert_ok()
    sample = shipyard_project.path / ".shipyard/hooks.py.sample"
    sample.rename(shipyard_project.path / ".shipyard/hooks.py")
    lines = shipyard_project.run("plugins").assert_ok().stdout.splitlines()
    assert any(line.split()[:2] == ["project", "local"] and "pre_deploy" in line for line in lines)


def test_literal_registry_password_is_redacted(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {**MINIMAL_CONFIG, "registry": {"username": "me", "password": "plain-text-pw"}}
    )
    result = shipyard_project.run("config").assert_ok()
    assert "plain-text-pw" not in result.stdout and "password: '[REDACTED]'" in result.stdout


def test_config_json_is_one_object(shipyard_project: Project) -> None:
    shipyard_project.write_config(MINIMAL_CONFIG)
    lines = shipyard_project.run("config", "--json").assert_ok().stdout.splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert (
        payload["event"] == "config" and payload["data"]["resolved"]["primary_host"] == "10.0.0.1"
    )


def test_docs_sections_come_from_the_schema(shipyard_project: Project) -> None:
    listing = shipyard_project.run("docs").assert_ok().stdout
    for section in ("configuration", "servers", "proxy", "builder", "boot", "ssh", "hooks"):
        assert f"  {section} " in listing
    proxy_docs = shipyard_project.run("docs", "proxy").assert_ok().stdout
    assert "app_port  (integer; default: 80)" in proxy_docs
    hooks_docs = shipyard_project.run("docs", "hooks").assert_ok().stdout
    assert "shipyard_pre_deploy(ctx)  [event]" in hooks_docs
    missing = shipyard_project.run("docs", "nope")
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: no docs section 'nope'")


def test_version(shipyard_project: Project) -> None:
    from shipyard.core import __version__

    assert shipyard_project.run("version").assert_ok().stdout == f"{__version__}\n"


def test_trace_prints_every_hook_call_with_arguments_and_result(shipyard_project: Project) -> None:
    result = shipyard_project.run("version", "--trace").assert_ok()
    trace = [line for line in result.stderr.splitlines() if line.startswith("[trace]")]
    assert trace[0] == "[trace] shipyard_configure(ctx=<Context version>) -> no implementations"
    assert "[trace] shipyard_pre_command returned []" in trace
    assert any(
        line.startswith(
            "[trace] shipyard_post_command(ctx=<Context version>, outcome=CommandOutcome("
        )
        for line in trace
    )


def test_no_plugin_disables_a_builtin_and_warns_on_unknown_names(shipyard_project: Project) -> None:
    result = shipyard_project.run(
        "plugins", "--no-plugin", "shell_hooks", "--no-plugin", "nonesuch"
    ).assert_ok()
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert "shell_hooks" not in names and "ssh" in names
    assert (
        result.stderr.strip()
        == "--no-plugin nonesuch: no plugin has that name (see `shipyard plugins`)"
    )


def test_plugins_json_and_hook_filter(shipyard_project: Project) -> None:
    payload = json.loads(
        shipyard_project.run("plugins", "--json", "--hook", "secrets-adapter").assert_ok().stdout
    )
    assert [row["name"] for row in payload["data"]] == ["secrets_adapters"]


def test_aliases_expand_to_commands(shipyard_project: Project) -> None:
    shipyard_project.write_config({**MINIMAL_CONFIG, "aliases": {"showcfg": "config --json"}})
    payload = json.loads(shipyard_project.run("showcfg").assert_ok().stdout)
    assert payload["event"] == "config"


def test_secrets_fetch_and_extract(shipyard_project: Project) -> None:
    fetched = (
        shipyard_project.run("secrets", "fetch", "-a", "test", "--from", "vault", "ABC", "XYZ")
        .assert_ok()
        .stdout
    )
    assert json.loads(fetched) == {"vault/ABC": "CBA", "vault/XYZ": "ZYX"}
    assert (
        shipyard_project.run("secrets", "extract", "XYZ", fetched.strip()).assert_ok().stdout
        == "ZYX\n"
    )
    missing = shipyard_project.run("secrets", "extract", "NOPE", fetched.strip())
    assert missing.exit_code == 1 and missing.stderr == "Error: Could not find secret NOPE\n"
    unknown = shipyard_project.run("secrets", "fetch", "-a", "nope", "X")
    assert unknown.exit_code == 1 and "unknown secrets adapter 'nope'" in unknown.stderr
