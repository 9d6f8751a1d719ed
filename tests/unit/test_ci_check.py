"""The ci_check plugin: a deploy is vetoed unless CI reports the version green, checked
against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shipyard.core.errors import ConfigError, HookAbort, SecretNotFound
from shipyard.core.testing import MINIMAL_CONFIG, Project

SHA = "0123456789abcdef0123456789abcdef01234567"
ABORT = "Hook `pre-deploy` in plugin 'ci_check' aborted: "


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class StatusServer:
    """Answers GETs with the scripted replies in order (the last one repeats) and records
    every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply(body=combined("success"))]
        self.requests: list[Seen] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    server.requests.append(Seen(self.path, dict(self.headers.items())))
                    reply = server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
                body = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value.replace("PORT", str(server.port)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        # A short poll interval only makes shutdown() prompt at teardown.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str = "/repos/acme/app/commits/{version}/status") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def ci() -> Iterator[StatusServer]:
    server = StatusServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def combined(
    state: str, *statuses: tuple[str, str, str | None, str | None], sha: str = SHA
) -> dict[str, Any]:
    """GitHub's combined-status shape; statuses are (context, state, description, url)."""
    return {
        "state": state,
        "sha": sha,
        "total_count": len(statuses),
        "statuses": [
            {"context": c, "state": s, "description": d, "target_url": u} for c, s, d, u in statuses
        ],
    }


def configure(project: Project, **settings: Any) -> None:
    project.write_config({**MINIMAL_CONFIG, "x-shipyard": {"ci_check": settings}})


def pre_deploy(project: Project, command: str = "deploy", version: str = SHA) -> None:
    ctx = project.context(command, version=version)
    ctx.hooks.pre_deploy(ctx)


def vetoed(project: Project, **kwargs: Any) -> str:
    with pytest.raises(HookAbort) as caught:
        pre_deploy(project, **kwargs)
    message = str(caught.value)
    assert message.startswith(ABORT), message
    return message.removeprefix(ABORT)


def test_success_allows_the_deploy(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url())
    pre_deploy(shipyard_project)
    assert [r.path for r in ci.requests] == [f"/repos/acme/app/commits/{SHA}/status"]
    assert ci.requests[0].headers["Accept"] == "application/vnd.github+json"
    assert ci.requests[0].headers["User-Agent"].startswith("shipyard/")
    assert "Authorization" not in ci.requests[0].headers


def test_failure_vetoes_naming_the_contexts_that_are_not_green(
    shipyard_project: Project, ci: StatusServer
) -> None:
    configure(shipyard_project, url=ci.url())
    ci.replies = [
        Reply(
            body=combined(
                "failure",
                ("ci/build", "failure", "failed: 3 tests", "https://ci.example.com/build/42"),
                ("lint", "pending", None, None),
                ("docs", "success", "ok", "https://ci.example.com/docs"),
            )
        )
    ]
    assert vetoed(shipyard_project) == (
        "CI status for 0123456 is failure: ci/build (failed: 3 tests), lint (pending); "
        "see https://ci.example.com/build/42"
    )


def test_error_state_vetoes(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url())
    ci.replies = [
        Reply(
            body=combined("error", ("deploy/checks", "error", None, None), sha="fedcba9876543210")
        )
    ]
    assert vetoed(shipyard_project) == "CI status for fedcba9 is error: deploy/checks (error)"


def test_pending_vetoes_at_once_without_wait(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url())
    ci.replies = [Reply(body=combined("pending", ("ci/build", "pending", "Build started", None)))]
    assert vetoed(shipyard_project) == "CI status for 0123456 is pending: ci/build (Build started)"
    assert len(ci.requests) == 1


def test_pending_with_no_statuses_says_nothing_has_reported(
    shipyard_project: Project, ci: StatusServer
) -> None:
    configure(shipyard_project, url=ci.url())
    ci.replies = [Reply(body=combined("pending"))]
    assert vetoed(shipyard_project) == (
        "CI status for 0123456 is pending: no CI statuses have been reported for this commit"
    )


def test_pending_then_success_is_waited_for(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url(), wait=600, interval=0.01)
    pending = Reply(body=combined("pending", ("ci/build", "pending", None, None)))
    ci.replies = [
        pending,
        pending,
        Reply(body=combined("success", ("ci/build", "success", None, None))),
    ]
    pre_deploy(shipyard_project)
    assert len(ci.requests) == 3


def test_still_pending_when_the_wait_is_over_vetoes(
    shipyard_project: Project, ci: StatusServer
) -> None:
    configure(shipyard_project, url=ci.url(), wait=0.05, interval=0.01)
    ci.replies = [Reply(body=combined("pending", ("ci/build", "pending", None, None)))]
    assert (
        vetoed(shipyard_project)
        == "CI status for 0123456 is pending after waiting 0.05s: ci/build (pending)"
    )
    assert len(ci.requests) >= 2


def test_failure_while_waiting_vetoes_at_once(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url(), wait=600, interval=0.01)
    ci.replies = [
        Reply(body=combined("pending", ("ci/build", "pending", None, None))),
        Reply(body=combined("failure", ("ci/build", "failure", None, None))),
    ]
    assert vetoed(shipyard_project) == "CI status for 0123456 is failure: ci/build (failure)"
    assert len(ci.requests) == 2


def test_token_is_sent_as_bearer_and_never_shown(
    shipyard_project: Project, ci: StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(shipyard_project, url=ci.url(), token_secret="GITHUB_TOKEN")
    shipyard_project.write_secrets("GITHUB_TOKEN=ghp_supersecret123\n")
    ci.replies = [Reply(status=404, body={"message": "Not Found"})]
    reason = vetoed(shipyard_project)
    assert ci.requests[0].headers["Authorization"] == "Bearer ghp_supersecret123"
    assert reason == (
        f"could not check CI status for 0123456: GET {ci.url()} failed: HTTP 404 Not Found "
        "(check x-shipyard.ci_check.token_secret)"
    ).replace("{version}", SHA)
    shown = capsys.readouterr()
    assert "ghp_supersecret123" not in shown.out + shown.err + reason


def test_token_follows_a_redirect_on_the_same_origin_only(
    shipyard_project: Project, ci: StatusServer
) -> None:
    configure(shipyard_project, url=ci.url(), token_secret="GITHUB_TOKEN")
    shipyard_project.write_secrets("GITHUB_TOKEN=ghp_supersecret123\n")
    ci.replies = [
        Reply(status=301, body=b"", headers={"Location": "/repositories/7/commits/x/status"}),
        Reply(status=302, body=b"", headers={"Location": "http://localhost:PORT/elsewhere"}),
        Reply(body=combined("success")),
    ]
    pre_deploy(shipyard_project)
    assert [r.path for r in ci.requests][1:] == ["/repositories/7/commits/x/status", "/elsewhere"]
    assert [r.headers.get("Authorization") for r in ci.requests] == [
        "Bearer ghp_supersecret123",
        "Bearer ghp_supersecret123",
        None,
    ]


def test_a_missing_token_secret_is_an_error(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url(), token_secret="NOPE")
    shipyard_project.write_secrets("OTHER=x\n")
    with pytest.raises(
        SecretNotFound, match=r"^x-shipyard\.ci_check\.token_secret: Secret 'NOPE' not found"
    ):
        pre_deploy(shipyard_project)
    assert ci.requests == []


def test_unreachable_url_fails_closed(shipyard_project: Project) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configure(shipyard_project, url=f"http://user:pw@127.0.0.1:{port}/status?access_token=abc")
    reason = vetoed(shipyard_project)
    assert reason.startswith(
        f"could not check CI status for 0123456: GET http://127.0.0.1:{port}/status failed: "
    )
    assert "pw" not in reason and "abc" not in reason


def test_non_200_and_bad_json_fail_closed(shipyard_project: Project, ci: StatusServer) -> None:
    configure(shipyard_project, url=ci.url("/status"))
    ci.replies = [Reply(status=500, body={"message": "boom"})]
    assert vetoed(shipyard_project).endswith(
        f"GET {ci.url('/status')} failed: HTTP 500 Internal Server Error"
    )
    ci.replies = [Reply(status=204, body=b"")]
    assert vetoed(shipyard_project).endswith("answered HTTP 204, expected 200")
    ci.replies = [Reply(body=b"<html>not json</html>")]
    assert vetoed(shipyard_project).endswith("did not answer JSON")
    ci.replies = [Reply(body={"state": "green"})]
    assert vetoed(shipyard_project).endswith(
        'did not answer a combined status (expected "state" to be one of success, pending, failure, error, '
        "got 'green')"
    )


def test_sha_placeholder_resolves_a_tag_to_its_commit(
    shipyard_project: Project, ci: StatusServer
) -> None:
    import subprocess

    configure(shipyard_project, url=ci.url("/commits/{sha}/status?ref={version}"))
    sha = shipyard_project.git_init()
    subprocess.run(["git", "tag", "v1.0"], cwd=shipyard_project.path, check=True)
    pre_deploy(shipyard_project, version="v1.0")
    assert ci.requests[0].path == f"/commits/{sha}/status?ref=v1.0"
    assert "cannot resolve version nope to a git commit" in vetoed(shipyard_project, version="nope")


def test_uncommitted_versions_are_vetoed_without_asking(
    shipyard_project: Project, ci: StatusServer
) -> None:
    configure(shipyard_project, url=ci.url())
    reason = vetoed(shipyard_project, version=f"{SHA}_uncommitted_0123456789abcdef")
    assert reason.startswith(
        f"version {SHA}_uncommitted_0123456789abcdef includes uncommitted changes"
    )
    assert ci.requests == []


def test_rollback_is_skipped_by_default_and_skip_for_is_configurable(
    shipyard_project: Project, ci: StatusServer
) -> None:
    ci.replies = [Reply(body=combined("failure"))]
    configure(shipyard_project, url=ci.url())
    pre_deploy(shipyard_project, command="rollback")
    assert ci.requests == []
    configure(shipyard_project, url=ci.url(), skip_for=["redeploy"])
    pre_deploy(shipyard_project, command="redeploy")
    assert ci.requests == []
    assert vetoed(shipyard_project, command="rollback") == "CI status for 0123456 is failure"


def test_disabled_when_not_configured(shipyard_project: Project, ci: StatusServer) -> None:
    shipyard_project.write_config(
        {**MINIMAL_CONFIG, "x-shipyard": {"broadcast": {"command": "true"}}}
    )
    pre_deploy(shipyard_project)
    shipyard_project.write_config(MINIMAL_CONFIG)
    pre_deploy(shipyard_project)
    assert ci.requests == []


def config_errors(project: Project, text: str) -> list[str]:
    project.write_config(text)
    with pytest.raises(ConfigError) as caught:
        pre_deploy(project)
    return caught.value.problems


BASE = """\
service: app
image: acme/app
servers: [10.0.0.1]
x-shipyard:
  ci_check:
"""


def test_config_errors_name_the_file_line_and_key_path(shipyard_project: Project) -> None:
    assert config_errors(shipyard_project, BASE + "    token_secret: GITHUB_TOKEN\n") == [
        "config/deploy.yml:5: x-shipyard.ci_check.url: is required",
    ]
    assert config_errors(shipyard_project, BASE) == [
        "config/deploy.yml:5: x-shipyard.ci_check.url: is required"
    ]
    assert config_errors(shipyard_project, BASE.replace("ci_check:", "ci_check: yes")) == [
        "config/deploy.yml:5: x-shipyard.ci_check: expected a mapping (key: value), got true",
    ]
    problems = config_errors(
        shipyard_project,
        BASE
        + (
            "    url: ftp://ci.example.com/{sha}\n"
            "    timeout: 0\n"
            "    wait: -1\n"
            "    interval: soon\n"
            "    skip_for: [rollback, 3]\n"
            "    tokn_secret: X\n"
        ),
    )
    assert problems == [
        "config/deploy.yml:9: x-shipyard.ci_check.interval: expected a number, got 'soon'",
        "config/deploy.yml:10: x-shipyard.ci_check.skip_for[1]: expected a string, got 3",
        "config/deploy.yml:11: x-shipyard.ci_check.tokn_secret: unknown key "
        "(the keys are: url, token_secret, timeout, wait, interval, skip_for)",
    ]
    problems = config_errors(
        shipyard_project,
        BASE + ("    url: ftp://ci.example.com/{sha}\n    timeout: 0\n    wait: -1\n"),
    )
    assert problems == [
        "config/deploy.yml:6: x-shipyard.ci_check.url: expected an http:// or https:// URL, "
        "got 'ftp://ci.example.com/{sha}'",
        "config/deploy.yml:7: x-shipyard.ci_check.timeout: must be more than 0 (seconds), got 0",
        "config/deploy.yml:8: x-shipyard.ci_check.wait: must be at least 0 (seconds), got -1",
    ]


def test_config_errors_point_at_the_destination_file(shipyard_project: Project) -> None:
    shipyard_project.write_config(MINIMAL_CONFIG)
    shipyard_project.write_config("x-shipyard:\n  ci_check:\n    url: 42\n", destination="staging")
    with pytest.raises(ConfigError) as caught:
        pre_deploy_in(shipyard_project, destination="staging")
    assert caught.value.problems == [
        "config/deploy.staging.yml:3: x-shipyard.ci_check.url: expected a string, got 42",
    ]


def pre_deploy_in(project: Project, **options: Any) -> None:
    ctx = project.context("deploy", version=SHA, **options)
    ctx.hooks.pre_deploy(ctx)
