"""``shipyard init``: write a commented config, a secrets stub, a sample shell hook for
every lifecycle hook and a sample Python hooks file, from the jinja2 templates in
``shipyard.templates``. Existing files are never overwritten."""

from __future__ import annotations

import inspect
import stat
from importlib import resources
from pathlib import Path

from shipyard.core.hookspecs import LIFECYCLE_EVENTS, shell_hook_name


def _template(name: str) -> str:
    return (resources.files("shipyard.templates") / name).read_text()


def _render(template_name: str, **values: object) -> str:
    import jinja2

    environment = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(_template(template_name)).render(**values)


def _hook_summary(event: str) -> list[str]:
    """The first paragraph of the hook's spec docstring: samples cannot drift from specs."""
    from shipyard.core import hookspecs

    doc = inspect.cleandoc(getattr(hookspecs, f"shipyard_{event}").__doc__ or "")
    paragraph = doc.split("\n\n")[0]
    return [line.replace("``", "`") for line in paragraph.splitlines()]


def write_scaffold(project_dir: Path) -> list[str]:
    """Create what is missing and return one line per thing done."""
    done: list[str] = []
    config = project_dir / "config" / "deploy.yml"
    if config.exists():
        done.append("Config file already exists in config/deploy.yml (remove first to create a new one)")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(_render("init/deploy.yml.j2"))
        done.append("Created configuration file in config/deploy.yml")

    state = project_dir / ".shipyard"
    secrets = state / "secrets"
    if not secrets.exists():
        state.mkdir(parents=True, exist_ok=True)
        secrets.write_text(_render("init/secrets.j2"))
        done.append("Created .shipyard/secrets file")

    hooks = state / "hooks"
    if hooks.exists():
        done.append("Hooks directory .shipyard/hooks already exists; samples not written")
    else:
        hooks.mkdir(parents=True)
        for event in LIFECYCLE_EVENTS:
            name = shell_hook_name(event)
            sample = hooks / f"{name}.sample"
            sample.write_text(_render("hooks/hook.sample.j2", name=name, summary=_hook_summary(event)))
            sample.chmod(sample.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        done.append("Created sample hooks in .shipyard/hooks")

    python_hooks = state / "hooks.py.sample"
    if not python_hooks.exists():
        python_hooks.write_text(_template("init/hooks.py.sample"))
        done.append("Created .shipyard/hooks.py.sample (a Python plugin: CI veto and broadcast)")
    return done
