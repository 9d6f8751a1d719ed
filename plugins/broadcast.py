"""Broadcast: send the audit events marked for broadcast to a command and/or a webhook.

Opt-in, with an ``x-shipyard.broadcast`` block in ``config/deploy.yml``::

    x-shipyard:
      broadcast:
        command: ["bin/notify-chat"]   # a list runs as argv; a string runs with `sh -c`
        url: https://chat.example.com/hooks/deploys
        headers: {X-Team: platform}
        timeout: 10

Events with ``details["broadcast"] == "true"`` (deploy and rollback results, ``shipyard
broadcast -m MSG``) are sent; others are only audited. The command runs locally with the
shell hooks' ``SHIPYARD_*`` variables plus ``SHIPYARD_MESSAGE`` and one ``SHIPYARD_<KEY>``
per event detail (and ``KAMAL_*`` twins); the URL gets a JSON POST. Secrets are not put in
either. A failure is a warning: a chat outage never fails a deploy that has happened.
This is Kamal's retired ``audit_broadcast_cmd``, built in.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from shipyard.core import __version__, hookimpl
from shipyard.core.config.plugin_settings import Problem, load_plugin_settings, show
from shipyard.core.errors import ShipyardError
from shipyard.plugins._http import http_failure, is_http_url, shown_url
from shipyard.plugins.shell_hooks import hook_environment

if TYPE_CHECKING:
    import urllib.request
    from collections.abc import Iterator

    from shipyard.core.context import Context
    from shipyard.core.records import AuditEvent

NAME = "broadcast"
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class BroadcastSettings:
    """``x-shipyard.broadcast``; validated by pydantic without importing it here."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    command: str | list[str] | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10

    def problems(self) -> Iterator[Problem]:
        if self.command is None and self.url is None:
            yield (), "set `command`, `url` or both (what should receive the broadcasts?)"
        if self.command is not None and not (self.command.strip() if isinstance(self.command, str) else self.command):
            yield ("command",), "is empty"
        if self.url is not None and not is_http_url(self.url):
            yield ("url",), f"expected an http:// or https:// URL, got {show(self.url)}"
        if self.timeout <= 0:
            yield ("timeout",), f"must be more than 0 (seconds), got {self.timeout:g}"


@hookimpl
def shipyard_audit(ctx: Context, event: AuditEvent) -> None:
    if event.details.get("broadcast") != "true":
        return
    # Nothing here may raise: the built-in audit plugin runs after us for the same event,
    # and an exception would stop pluggy before the audit log line is written.
    try:
        settings = load_plugin_settings(ctx.config, NAME, BroadcastSettings)
        if settings is None:
            return
        payload = _payload(ctx, event)
        env = command_environment(ctx, event, payload) if settings.command is not None else {}
    except ShipyardError as error:
        ctx.output.warn(f"broadcast: not sent: {error}")
        return
    if settings.command is not None:
        _run_command(ctx, settings, settings.command, env)
    if settings.url is not None:
        _post(ctx, settings, settings.url, payload)


def _payload(ctx: Context, event: AuditEvent) -> dict[str, Any]:
    """What is sent, as the webhook's JSON; the command's variables come from it too."""
    return {
        "message": event.message,
        "recorded_at": event.recorded_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "performer": event.performer,
        "service": ctx.config.service,
        "version": event.details.get("version") or ctx.version,
        "destination": event.destination,
        "hosts": list(event.hosts or ctx.hosts),
        "details": dict(event.details),
    }


def command_environment(ctx: Context, event: AuditEvent, payload: dict[str, Any]) -> dict[str, str]:
    """The ``SHIPYARD_*`` variables of the shell hooks for this event, plus
    ``SHIPYARD_MESSAGE`` and a ``SHIPYARD_<KEY>`` per detail (without ``KAMAL_*`` twins)."""
    runtime = _number(event.details.get("runtime"))
    ours = hook_environment(ctx, "post_deploy", hosts=payload["hosts"], runtime=runtime)
    # The event is the fact being announced: its time and version win over the command's.
    ours["SHIPYARD_RECORDED_AT"] = payload["recorded_at"]
    if payload["version"] != ours["SHIPYARD_VERSION"]:
        ours["SHIPYARD_VERSION"] = payload["version"]
        ours["SHIPYARD_SERVICE_VERSION"] = f"{payload['service']}@{payload['version'][:7]}"
    if event.role:
        ours["SHIPYARD_ROLE"] = event.role
    for key, value in event.details.items():
        # Details add facts; they never redefine a variable the shell hooks document.
        ours.setdefault(f"SHIPYARD_{_NOT_A_NAME.sub('_', key).strip('_').upper()}", value)
    ours["SHIPYARD_MESSAGE"] = event.message
    return ours


def _run_command(ctx: Context, settings: BroadcastSettings, command: str | list[str], ours: dict[str, str]) -> None:
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    name = f"`{_program(command)}`"
    # The deployer's own environment (PATH, HOME...), never the secrets.
    env = {**os.environ, **ours}
    env.update({f"KAMAL_{key.removeprefix('SHIPYARD_')}": value for key, value in ours.items()})
    try:
        done = subprocess.run(argv, env=env, cwd=ctx.project_dir, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=settings.timeout, check=False)
    except subprocess.TimeoutExpired:
        ctx.output.warn(f"broadcast: command {name} timed out after {settings.timeout:g}s "
                        "(x-shipyard.broadcast.timeout)")
        return
    except OSError as error:
        ctx.output.warn(f"broadcast: command {name} could not run: {error.strerror or error}")
        return
    shown = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = " | ".join(line for line in shown.splitlines()[-3:] if line.strip())
        ctx.output.warn(f"broadcast: command {name} failed (exit {done.returncode})" + (f": {tail}" if tail else ""))
        return
    if shown:
        ctx.output.detail(shown)
    ctx.output.detail(f"Broadcast sent with command {name}")


def _post(ctx: Context, settings: BroadcastSettings, url: str, payload: dict[str, Any]) -> None:
    import urllib.request

    headers = {"Content-Type": "application/json", "User-Agent": f"shipyard/{__version__}", **settings.headers}
    body = json.dumps(payload).encode()
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with _no_redirects().open(request, timeout=settings.timeout) as response:
            response.read()
    except Exception as error:
        reason = http_failure(error)
        if reason is None:
            raise
        ctx.output.warn(f"broadcast: POST {shown_url(url)} failed: {reason}{_redirect_hint(error)}")
        return
    ctx.output.detail(f"Broadcast sent to {shown_url(url)}")


def _redirect_hint(error: BaseException) -> str:
    from urllib.error import HTTPError

    if isinstance(error, HTTPError) and 300 <= error.code < 400:
        return " (redirects are not followed; set x-shipyard.broadcast.url to the final address)"
    return ""


def _no_redirects() -> urllib.request.OpenerDirector:
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        # urllib would turn a redirected POST into a GET without the payload, and call
        # that a success; a 3xx is reported instead.
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect)


def _program(command: str | list[str]) -> str:
    """The program a command runs, to name it in warnings without echoing its arguments
    (which may hold a token the user wrote into the command)."""
    if isinstance(command, list):
        return command[0]
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[0] if words else "sh"


def _number(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None
