"""The broadcast plugin: audit events marked ``broadcast="true"`` go to the configured
command and webhook (a real HTTP server on 127.0.0.1); failures are warnings."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipyard.core.testing import MINIMAL_CONFIG, FakeTransportKit, Project

# Records the variables a broadcast command sees, one per line, into $DUMP_TO.
DUMP_ENV = "env | grep -E '^(SHIPYARD|KAMAL)_|^DB_PASSWORD=' | sort > \"$DUMP_TO\""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Webhook:
    """Accepts POSTs, answering ``status`` (and ``location`` for redirects)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.status = 204
        self.location: str | None = None
        self.received: list[Received] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.received.append(Received(self.path, dict(self.headers.items()), body))
                self.send_response(hook.status)
                if hook.location:
                    self.send_header("Location", hook.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/deploys"
        # A short poll interval only makes shutdown() prompt at teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def project(
    shipyard_project: Project,
    shipyard_fake_transport: FakeTransportKit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    """A project with secrets, whose audit-log appends go to the fake transport."""
    shipyard_project.write_secrets("DB_PASSWORD=hunter2-secret\n")
    monkeypatch.setenv("DUMP_TO", str(tmp_path / "env"))
    return shipyard_project


def configure(project: Project, **settings: Any) -> None:
    project.write_config({**MINIMAL_CONFIG, "x-shipyard": {"broadcast": settings}})


def dumped(tmp_path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())


def audit_lines(kit: FakeTransportKit) -> list[str]:
    return [
        argv[-1]
        for argvs in kit.commands.values()
        for argv in argvs
        if argv[-2].endswith("-audit.log")
    ]


def test_broadcast_command_runs_the_command_and_posts_the_event(
    project: Project, webhook: Webhook, shipyard_fake_transport: FakeTransportKit, tmp_path: Path
) -> None:
    configure(project, command=DUMP_ENV, url=webhook.url, headers={"X-Team": "platform"})
    result = project.run(
        "broadcast", "-m", "hello world", "--version", "0123456789abcdef"
    ).assert_ok()
    assert result.stderr == ""
    env = dumped(tmp_path)
    assert env["SHIPYARD_MESSAGE"] == env["KAMAL_MESSAGE"] == "hello world"
    assert env["SHIPYARD_BROADCAST"] == env["KAMAL_BROADCAST"] == "true"
    assert env["SHIPYARD_SERVICE"] == "app"
    assert env["SHIPYARD_VERSION"] == "0123456789abcdef"
    assert env["SHIPYARD_SERVICE_VERSION"] == "app@0123456"
    assert env["SHIPYARD_HOSTS"] == env["KAMAL_HOSTS"] == "10.0.0.1,10.0.0.2"
    assert env["SHIPYARD_COMMAND"] == "broadcast"
    assert env["SHIPYARD_PERFORMER"]
    assert "DB_PASSWORD" not in env  # secrets are not broadcast

    [received] = webhook.received
    assert received.path == "/hooks/deploys"
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["X-Team"] == "platform"
    payload = json.loads(received.body)
    assert payload == {
        "message": "hello world",
        "recorded_at": payload["recorded_at"],
        "performer": env["SHIPYARD_PERFORMER"],
        "service": "app",
        "version": "0123456789abcdef",
        "destination": None,
        "hosts": ["10.0.0.1", "10.0.0.2"],
        "details": {"broadcast": "true"},
    }
    assert payload["recorded_at"] == env["SHIPYARD_RECORDED_AT"]
    assert payload["recorded_at"].endswith("Z") and "T" in payload["recorded_at"]
    assert b"hunter2" not in received.body
    # The audit log still gets its line after the broadcast.
    assert any(line.endswith("] hello world") for line in audit_lines(shipyard_fake_transport))


def test_details_become_variables_and_the_event_version_wins(
    project: Project, webhook: Webhook, tmp_path: Path
) -> None:
    configure(project, command=["sh", "-c", DUMP_ENV], url=webhook.url)
    project.write_config({"servers": ["s1"]}, destination="staging")
    ctx = project.context("rollback", version="ffff000011112222", destination="staging")
    ctx.audit(
        "Rolled back to abcdef123456",
        broadcast="true",
        runtime="12.6",
        version="abcdef123456",
        **{"dry-run": "no", "service": "ignored"},
    )
    env = dumped(tmp_path)
    assert env["SHIPYARD_MESSAGE"] == "Rolled back to abcdef123456"
    assert env["SHIPYARD_RUNTIME"] == env["KAMAL_RUNTIME"] == "13"
    assert env["SHIPYARD_VERSION"] == "abcdef123456"
    assert env["SHIPYARD_SERVICE_VERSION"] == "app@abcdef1"
    assert env["SHIPYARD_DRY_RUN"] == env["KAMAL_DRY_RUN"] == "no"
    assert env["SHIPYARD_SERVICE"] == "app"  # a detail never redefines a documented variable
    assert env["SHIPYARD_HOSTS"] == "s1"
    assert env["SHIPYARD_DESTINATION"] == "staging"
    assert env["SHIPYARD_COMMAND"] == "rollback"
    [payload] = webhook.payloads()
    assert (payload["version"], payload["destination"], payload["hosts"]) == (
        "abcdef123456",
        "staging",
        ["s1"],
    )
    assert payload["details"] == {
        "broadcast": "true",
        "runtime": "12.6",
        "version": "abcdef123456",
        "dry-run": "no",
        "service": "ignored",
    }


def test_events_without_the_broadcast_flag_are_not_sent(
    project: Project, webhook: Webhook, shipyard_fake_transport: FakeTransportKit, tmp_path: Path
) -> None:
    configure(project, command=DUMP_ENV, url=webhook.url)
    ctx = project.context("app", "boot", version="v1")
    ctx.audit("Booted app version v1", version="v1")
    ctx.audit("Pruned containers", broadcast="false")
    ctx.hooks.unconfigure(ctx)  # the audit plugin writes in the background until then
    assert webhook.received == []
    assert not (tmp_path / "env").exists()
    assert len(audit_lines(shipyard_fake_transport)) == 2 * 2  # two events, two hosts


def test_not_configured_sends_nothing(project: Project, webhook: Webhook, tmp_path: Path) -> None:
    project.write_config(MINIMAL_CONFIG)
    assert project.run("broadcast", "-m", "hi", "--version", "v1").assert_ok().stderr == ""
    project.write_config({**MINIMAL_CONFIG, "x-shipyard": {"ci_check": {"url": webhook.url}}})
    assert project.run("broadcast", "-m", "hi", "--version", "v1").assert_ok().stderr == ""
    assert webhook.received == []


def test_failures_are_warnings_and_the_command_still_succeeds(
    project: Project, webhook: Webhook, shipyard_fake_transport: FakeTransportKit
) -> None:
    webhook.status = 500
    configure(
        project, command="echo chat is down >&2; exit 3", url=webhook.url + "?token=t0ps3cret"
    )
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.splitlines() == [
        "broadcast: command `echo` failed (exit 3): chat is down",
        f"broadcast: POST {webhook.url} failed: HTTP 500 Internal Server Error",
    ]
    assert len(webhook.received) == 1
    assert any(line.endswith("] hello") for line in audit_lines(shipyard_fake_transport))


def test_unreachable_url_missing_program_and_slow_command_are_warnings(project: Project) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configure(
        project,
        command=["/nonexistent/notify", "--token", "s3cret"],
        url=f"http://127.0.0.1:{port}/x",
    )
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.splitlines() == [
        "broadcast: command `/nonexistent/notify` could not run: No such file or directory",
        f"broadcast: POST http://127.0.0.1:{port}/x failed: cannot connect: Connection refused",
    ]
    configure(project, command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.strip() == (
        f"broadcast: command `{sys.executable}` timed out after 0.2s (x-shipyard.broadcast.timeout)"
    )


def test_redirects_are_not_followed(project: Project, webhook: Webhook) -> None:
    webhook.status, webhook.location = 302, "/elsewhere"
    configure(project, url=webhook.url)
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.strip() == (
        f"broadcast: POST {webhook.url} failed: HTTP 302 Found "
        "(redirects are not followed; set x-shipyard.broadcast.url to the final address)"
    )
    assert [r.path for r in webhook.received] == ["/hooks/deploys"]


def test_bad_settings_are_a_warning_naming_the_key(
    project: Project, webhook: Webhook, shipyard_fake_transport: FakeTransportKit
) -> None:
    project.write_config(
        "service: app\nimage: acme/app\nservers: [10.0.0.1]\n"
        "x-shipyard:\n  broadcast:\n    url: ftp://chat.example.com\n    command: 3\n    timeout: 0\n"
    )
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.splitlines() == [
        "broadcast: not sent: config/deploy.yml:7: x-shipyard.broadcast.command: "
        "expected a string or a list of strings, got 3",
    ]
    project.write_config(
        "service: app\nimage: acme/app\nservers: [10.0.0.1]\n"
        "x-shipyard:\n  broadcast:\n    url: ftp://chat.example.com\n    command: []\n    timeout: 0\n"
    )
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.splitlines() == [
        "broadcast: not sent: config/deploy.yml:7: x-shipyard.broadcast.command: is empty",
        "config/deploy.yml:6: x-shipyard.broadcast.url: expected an http:// or https:// URL, "
        "got 'ftp://chat.example.com'",
        "config/deploy.yml:8: x-shipyard.broadcast.timeout: must be more than 0 (seconds), got 0",
    ]
    project.write_config(
        "service: app\nimage: acme/app\nservers: [10.0.0.1]\nx-shipyard:\n  broadcast: {}\n"
    )
    result = project.run("broadcast", "-m", "hello", "--version", "v1").assert_ok()
    assert result.stderr.strip() == (
        "broadcast: not sent: config/deploy.yml:5: x-shipyard.broadcast: "
        "set `command`, `url` or both (what should receive the broadcasts?)"
    )
    assert webhook.received == []
    assert len(audit_lines(shipyard_fake_transport)) == 3  # the audit log is written regardless
