"""The plugin test kit: a pytest plugin shipped with shipyard for plugin authors (and used
by shipyard's own tests).

Installed with shipyard as the ``pytest11`` entry point ``shipyard``, so its fixtures are
available in any test suite:

* ``shipyard_project`` — a temporary project directory with helpers to write
  ``config/deploy.yml``, secrets, ``.shipyard/hooks.py`` (from a string or a function's
  source) and shell hooks, and to run the real CLI in-process (``project.run("config")``).
* ``shipyard_hook_recorder`` — records every hook call (name, arguments, result or
  error) of every CLI run in the test: ``recorder.names()``, ``recorder.getcalls("pre_deploy")``.
* ``shipyard_fake_transport`` — replaces SSH for unit tests: records the commands sent to
  each host and answers from scripted responses. (Integration tests use real sshd.)

Example::

    def test_my_plugin_vetoes(shipyard_project, shipyard_hook_recorder):
        shipyard_project.write_config(MINIMAL)
        result = shipyard_project.run("plugins")
        result.assert_ok()
"""

from __future__ import annotations

import inspect
import os
import re
import stat
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import pytest

from shipyard.core import hookimpl
from shipyard.core.plugins import ShipyardPluginManager, manager_observers
from shipyard.core.transport import CommandResult, OutputSink, Transport

MINIMAL_CONFIG: dict[str, Any] = {
    "service": "app",
    "image": "acme/app",
    "servers": ["10.0.0.1", "10.0.0.2"],
}


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def assert_ok(self) -> CliResult:
        assert self.exit_code == 0, f"exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        return self

    def assert_failed(self, code: int = 1) -> CliResult:
        assert self.exit_code == code, f"expected exit {code}, got {self.exit_code}\n{self.stdout}\n{self.stderr}"
        return self


@dataclass(frozen=True)
class HookCall:
    name: str  # without the shipyard_ prefix
    kwargs: dict[str, Any]
    result: Any = None
    error: BaseException | None = None


class HookRecorder:
    """Records hook calls on every plugin manager it is attached to."""

    def __init__(self) -> None:
        self.calls: list[HookCall] = []
        self._lock = threading.Lock()

    def attach(self, manager: ShipyardPluginManager) -> None:
        def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
            pass

        def after(
            outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
        ) -> None:
            call = HookCall(
                hook_name.removeprefix("shipyard_"),
                dict(kwargs),
                None if outcome.exception else outcome.get_result(),
                outcome.exception,
            )
            with self._lock:
                self.calls.append(call)

        manager.add_hookcall_monitoring(before, after)

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    def getcalls(self, name: str) -> list[HookCall]:
        return [call for call in self.calls if call.name == name.removeprefix("shipyard_")]


class FakeTransport(Transport):
    """Answers commands from scripted responses and records everything it was asked."""

    kind = "fake"

    def __init__(self, host: str, kit: FakeTransportKit) -> None:
        super().__init__(host)
        self.kit = kit

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, on_output: OutputSink | None = None,
            timeout: float | None = None) -> CommandResult:
        argv = tuple(argv)
        self.kit.record(self.host, argv)
        exit_status, stdout, stderr = self.kit.answer(self.host, argv)
        if on_output:
            for line in stdout.splitlines():
                on_output("stdout", line)
        return CommandResult(self.host, argv, exit_status, stdout, stderr)

    def upload(self, content: bytes | Path, remote_path: str, *, mode: int = 0o644) -> None:
        data = content.read_bytes() if isinstance(content, Path) else content
        self.kit.files[(self.host, remote_path)] = (data, mode)

    def download(self, remote_path: str) -> bytes:
        return self.kit.files[(self.host, remote_path)][0]


@dataclass
class FakeTransportKit:
    """A plugin giving every host a :class:`FakeTransport`.

    ``respond(pattern, stdout=..., exit_status=..., host=None)`` scripts an answer for
    commands whose shell-joined text matches ``pattern`` (a regex); later rules win.
    """

    commands: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    files: dict[tuple[str, str], tuple[bytes, int]] = field(default_factory=dict)
    rules: list[tuple[re.Pattern[str], str | None, tuple[int, str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, pattern: str, *, stdout: str = "", stderr: str = "", exit_status: int = 0,
                host: str | None = None) -> None:
        self.rules.append((re.compile(pattern), host, (exit_status, stdout, stderr)))

    def record(self, host: str, argv: tuple[str, ...]) -> None:
        with self._lock:
            self.commands.setdefault(host, []).append(argv)

    def answer(self, host: str, argv: tuple[str, ...]) -> tuple[int, str, str]:
        import shlex

        text = shlex.join(argv)
        for pattern, only_host, reply in reversed(self.rules):
            if (only_host is None or only_host == host) and pattern.search(text):
                return reply
        return 0, "", ""

    @hookimpl(tryfirst=True)
    def shipyard_transport(self, ctx: Any, host: str) -> Transport:
        return FakeTransport(host, self)


class Project:
    """A temporary shipyard project and an in-process CLI to run in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, relative: str, text: str, *, executable: bool = False) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if executable:
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return target

    def write_config(self, config: dict[str, Any] | str = MINIMAL_CONFIG, *, destination: str | None = None) -> Path:
        import yaml

        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        name = f"config/deploy.{destination}.yml" if destination else "config/deploy.yml"
        return self.write(name, textwrap.dedent(text))

    def write_secrets(self, text: str, *, destination: str | None = None, common: bool = False) -> Path:
        suffix = "-common" if common else f".{destination}" if destination else ""
        return self.write(f".shipyard/secrets{suffix}", textwrap.dedent(text))

    def write_hooks_py(self, source: str | Callable[..., Any]) -> Path:
        """Write ``.shipyard/hooks.py`` from source text, or from a function's body."""
        if callable(source):
            body = inspect.getsource(source).split("\n", 1)[1]
            text = textwrap.dedent(body)
        else:
            text = textwrap.dedent(source)
        return self.write(".shipyard/hooks.py", text)

    def write_shell_hook(self, name: str, script: str, *, directory: str = ".shipyard/hooks") -> Path:
        return self.write(f"{directory}/{name}", textwrap.dedent(script), executable=True)

    def git_init(self) -> str:
        """Make the project a git repository with one commit; return the sha."""
        import subprocess

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True, text=True).stdout

        git("init", "-q")
        git("add", "-A")
        git("-c", "user.email=tester@example.com", "-c", "user.name=Tester", "commit", "-qm", "init", "--allow-empty")
        return git("rev-parse", "HEAD").strip()

    def context(self, command: str = "deploy", subcommand: str | None = None, **options: Any) -> Any:
        """A real :class:`~shipyard.core.context.Context` for this project, with plugins
        loaded as the CLI would, for calling hooks directly: ``ctx.hooks.pre_deploy(ctx)``.
        ``options`` are :class:`~shipyard.core.context.GlobalOptions` fields."""
        from shipyard.core.context import Context, GlobalOptions
        from shipyard.core.output import Output

        global_options = GlobalOptions(**options)
        manager = ShipyardPluginManager()
        manager.load(project_dir=self.path, disabled=global_options.no_plugins,
                     project_hooks=not global_options.skip_hooks)
        return Context(options=global_options, output=Output(json_mode=global_options.json), plugins=manager,
                       command=command, subcommand=subcommand, project_dir=self.path)

    def run(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run ``shipyard ARGS`` in-process in this project and capture its output."""
        from click.testing import CliRunner

        from shipyard.core.cli.main import cli

        previous = Path.cwd()
        os.chdir(self.path)
        try:
            result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        finally:
            os.chdir(previous)
        return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def shipyard_project(tmp_path: Path) -> Project:
    """A temporary project directory; ``.run(...)`` runs the CLI inside it."""
    project = tmp_path / "project"
    project.mkdir()
    return Project(project)


@pytest.fixture
def shipyard_hook_recorder() -> Iterator[HookRecorder]:
    """Records the hook calls of every plugin manager created during the test."""
    recorder = HookRecorder()
    manager_observers.append(recorder.attach)
    try:
        yield recorder
    finally:
        manager_observers.remove(recorder.attach)


@pytest.fixture
def shipyard_fake_transport() -> Iterator[FakeTransportKit]:
    """Every host gets a recording fake transport instead of SSH (unit tests only)."""
    kit = FakeTransportKit()

    def register(manager: ShipyardPluginManager) -> None:
        manager.add(kit, "fake_transport", source="test")

    manager_observers.append(register)
    try:
        yield kit
    finally:
        manager_observers.remove(register)
