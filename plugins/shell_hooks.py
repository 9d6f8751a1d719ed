"""Shell hooks: Kamal's executable scripts, driven by the Python lifecycle.

For every lifecycle event (``hookspecs.LIFECYCLE_EVENTS``) this plugin runs the
executable ``<hooks_path>/<hook-name>`` of the project (``.shipyard/hooks``, or
``.kamal/hooks`` in an unconverted Kamal project) and then ``~/.shipyard/hooks/<hook-name>``.
Scripts run locally with ``SHIPYARD_*`` variables (and ``KAMAL_*`` twins of each, so Kamal
scripts work unchanged). A non-zero exit aborts the command with the hook's output.
``-H/--skip-hooks`` skips them all.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.core import hookimpl
from shipyard.core.errors import HookFailed
from shipyard.core.hookspecs import LIFECYCLE_EVENTS, shell_hook_name

if TYPE_CHECKING:
    from shipyard.core.context import Context

#: Hooks whose environment also carries the secrets (Kamal passes them to these three).
WITH_SECRETS = frozenset({"pre_connect", "pre_deploy", "post_deploy"})
USER_HOOKS_DIR = Path("~/.shipyard/hooks")


@dataclass(frozen=True)
class Script:
    hook: str  # e.g. pre-deploy
    path: Path
    scope: str  # project | user


def hooks_dirs(ctx: Context) -> list[tuple[str, Path]]:
    return [("project", ctx.config.hooks_dir), ("user", USER_HOOKS_DIR.expanduser())]


def scripts(ctx: Context) -> list[Script]:
    """Every executable hook script that would run, for ``shipyard plugins``."""
    found = []
    for event in LIFECYCLE_EVENTS:
        for scope, directory in hooks_dirs(ctx):
            path = directory / shell_hook_name(event)
            if path.is_file() and os.access(path, os.X_OK):
                found.append(Script(shell_hook_name(event), path, scope))
    return found


def hook_environment(ctx: Context, event: str, *, hosts: list[str] | None = None,
                     runtime: float | None = None) -> dict[str, str]:
    """The ``SHIPYARD_*`` variables for ``event`` (without ``KAMAL_*`` twins)."""
    variables = {
        "RECORDED_AT": ctx.recorded_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "PERFORMER": ctx.performer,
        "SERVICE": ctx.config.service,
        "VERSION": ctx.version,
        "SERVICE_VERSION": ctx.service_version,
        "HOSTS": ",".join(hosts if hosts is not None else ctx.hosts),
        "ROLES": ",".join(role.name for role in ctx.roles),
        "COMMAND": ctx.command,
        "LOCK": "true" if ctx.lock_held else "false",
    }
    if ctx.subcommand:
        variables["SUBCOMMAND"] = ctx.subcommand
    if ctx.destination:
        variables["DESTINATION"] = ctx.destination
    if runtime is not None:
        variables["RUNTIME"] = str(round(runtime))
    return {f"SHIPYARD_{key}": value for key, value in variables.items()}


def run_event(ctx: Context, event: str, **details: Any) -> None:
    if ctx.options.skip_hooks:
        return
    found = [
        directory / shell_hook_name(event)
        for _, directory in hooks_dirs(ctx)
        if (directory / shell_hook_name(event)).is_file()
    ]
    if not found:
        return
    env = dict(os.environ)
    if event in WITH_SECRETS:
        env.update(ctx.secrets.all())
    ours = hook_environment(ctx, event, **details)
    env.update(ours)
    env.update({f"KAMAL_{key.removeprefix('SHIPYARD_')}": value for key, value in ours.items()})
    for path in found:
        _run_script(ctx, event, path, env)


def _run_script(ctx: Context, event: str, path: Path, env: dict[str, str]) -> None:
    name = shell_hook_name(event)
    if not os.access(path, os.X_OK):
        ctx.output.warn(f"Hook `{name}` at {path} is not executable; skipped (chmod +x it to run it)")
        return
    ctx.output.info(f"Running the {name} hook...")
    started = time.monotonic()
    completed = subprocess.run(
        [str(path)], env=env, cwd=ctx.project_dir, capture_output=True, text=True, check=False
    )
    shown = (completed.stdout + completed.stderr).rstrip()
    if completed.returncode != 0:
        raise HookFailed(f"Hook `{name}` failed (exit {completed.returncode}):\n{shown}".rstrip())
    if shown:
        verbose = _hook_output(ctx, event) == "verbose"
        (ctx.output.info if verbose else ctx.output.detail)(shown)
    ctx.output.detail(f"Hook `{name}` finished in {time.monotonic() - started:.1f}s")


def _hook_output(ctx: Context, event: str) -> str | None:
    setting = ctx.config.schema.hooks_output
    if isinstance(setting, dict):
        return setting.get(shell_hook_name(event))
    return setting


# One implementation per lifecycle event. A non-zero exit raises HookFailed, which aborts.


@hookimpl
def shipyard_pre_connect(ctx: Context) -> None:
    run_event(ctx, "pre_connect")


@hookimpl
def shipyard_pre_build(ctx: Context) -> None:
    run_event(ctx, "pre_build")


@hookimpl
def shipyard_post_push(ctx: Context) -> None:
    run_event(ctx, "post_push")


@hookimpl
def shipyard_pre_deploy(ctx: Context) -> None:
    run_event(ctx, "pre_deploy")


@hookimpl
def shipyard_pre_app_boot(ctx: Context, hosts: list[str]) -> None:
    run_event(ctx, "pre_app_boot", hosts=hosts)


@hookimpl
def shipyard_post_app_boot(ctx: Context, hosts: list[str]) -> None:
    run_event(ctx, "post_app_boot", hosts=hosts)


@hookimpl
def shipyard_post_deploy(ctx: Context, runtime: float) -> None:
    run_event(ctx, "post_deploy", runtime=runtime)


@hookimpl
def shipyard_deploy_failed(ctx: Context) -> None:
    run_event(ctx, "deploy_failed")


@hookimpl
def shipyard_pre_proxy_reboot(ctx: Context, hosts: list[str]) -> None:
    run_event(ctx, "pre_proxy_reboot", hosts=hosts)


@hookimpl
def shipyard_post_proxy_reboot(ctx: Context, hosts: list[str]) -> None:
    run_event(ctx, "post_proxy_reboot", hosts=hosts)


@hookimpl
def shipyard_docker_setup(ctx: Context) -> None:
    run_event(ctx, "docker_setup")
