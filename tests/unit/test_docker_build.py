"""The docker_build plugin without Docker: tags, the build context, credentials, the
local-registry decision, reading build and push streams, the secrets plan, and the
`build` commands' wiring (with a fake engine or a replacing plugin)."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.core.errors import ShipyardError
from shipyard.core.records import BuildResult
from shipyard.core.testing import FakeTransportKit, Project
from shipyard.plugins import _build_engine, docker_build
from shipyard.plugins._build_plan import (
    BuildLog,
    LocalRegistrySettings,
    PushTracker,
    RegistryContainer,
    auth_config,
    buildkit_command,
    check_secret_names,
    check_tag,
    choose_context,
    cli_has_builtin_buildkit,
    decide_local_registry,
    dockerfile_path,
    image_tags,
    local_registry_port,
    probe_kind,
    split_reference,
    stringify,
)

LOCAL = {
    "service": "app",
    "image": "app",
    "servers": ["10.0.0.1"],
    "registry": {"server": "localhost:5555"},
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        [
            "git",
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=T",
            "-c",
            "protocol.file.allow=always",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# --- tags ------------------------------------------------------------------------------


def test_tags_are_the_version_and_latest() -> None:
    assert image_tags("localhost:5555/app", "abc123", "latest") == (
        "localhost:5555/app:abc123",
        "localhost:5555/app:latest",
    )


def test_a_destination_tags_latest_dash_destination(shipyard_project: Project) -> None:
    shipyard_project.write_config({**LOCAL, "image": "acme/app", "registry": {"server": "ghcr.io"}})
    shipyard_project.write_config({"servers": ["10.0.0.9"]}, destination="staging")
    ctx = shipyard_project.context("build", "push", version="v7", destination="staging")
    spec = docker_build.build_spec(ctx)
    assert spec.tags == ("ghcr.io/acme/app:v7", "ghcr.io/acme/app:latest-staging")
    assert spec.labels == {"service": "app"}


def test_version_from_the_environment_and_git(
    shipyard_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipyard_project.write_config(LOCAL)
    sha = shipyard_project.git_init()
    assert (
        docker_build.build_spec(shipyard_project.context("build", "push")).tags[0]
        == f"localhost:5555/app:{sha}"
    )
    monkeypatch.setenv("VERSION", "from-env")
    assert (
        docker_build.build_spec(shipyard_project.context("build", "push")).tags[0]
        == "localhost:5555/app:from-env"
    )


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a/b", "a:b", "x" * 129, "sp ace"])
def test_a_version_that_cannot_be_a_tag_is_refused(bad: str) -> None:
    with pytest.raises(ShipyardError, match="cannot be an image tag"):
        check_tag(bad)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("localhost:5555/app:v1", ("localhost:5555/app", "v1")),
        ("localhost:5555/app", ("localhost:5555/app", "latest")),
        ("acme/app:latest-staging", ("acme/app", "latest-staging")),
        ("app", ("app", "latest")),
    ],
)
def test_split_reference(reference: str, expected: tuple[str, str]) -> None:
    assert split_reference(reference) == expected


def test_build_args_are_strings() -> None:
    assert stringify({"A": True, "B": False, "C": 3, "D": "x", "E": None}) == {
        "A": "true",
        "B": "false",
        "C": "3",
        "D": "x",
        "E": "",
    }


# --- the build context -----------------------------------------------------------------


def test_no_context_means_a_git_clone_and_a_path_means_the_working_tree(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert choose_context(tmp_path, None).mode == "git"
    here = choose_context(tmp_path, ".")
    assert (here.mode, here.path) == ("path", tmp_path.resolve())
    assert choose_context(tmp_path, "sub").path == (tmp_path / "sub").resolve()
    with pytest.raises(ShipyardError, match="is not a directory"):
        choose_context(tmp_path, "missing")


def test_a_missing_dockerfile_is_named(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    assert dockerfile_path(tmp_path, "Dockerfile") == (tmp_path / "Dockerfile").resolve()
    with pytest.raises(ShipyardError, match=r"Missing docker/Prod.Dockerfile"):
        dockerfile_path(tmp_path, "docker/Prod.Dockerfile")


def test_the_clone_has_head_not_the_dirty_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "file.txt").write_text("committed\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    (repo / "file.txt").write_text("dirty\n")
    (repo / "untracked.txt").write_text("new\n")
    with _build_engine.git_clone(repo, "app") as checkout:
        assert (checkout.build_dir / "file.txt").read_text() == "committed\n"
        assert not (checkout.build_dir / "untracked.txt").exists()
        assert checkout.sha == git(repo, "rev-parse", "HEAD")
        root = checkout.root
    assert not root.exists()  # removed afterwards
    assert sorted(_build_engine.uncommitted_changes(repo)) == [" M file.txt", "?? untracked.txt"]


def test_the_clone_works_on_a_detached_head_and_from_a_subdirectory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "services" / "web").mkdir(parents=True)
    (repo / "services" / "web" / "Dockerfile").write_text("v1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    (repo / "services" / "web" / "Dockerfile").write_text("v2\n")
    git(repo, "commit", "-qam", "two")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    (repo / "services" / "web" / "Dockerfile").write_text("v3\n")
    git(repo, "commit", "-qam", "off any branch")
    with _build_engine.git_clone(repo / "services" / "web", "app") as checkout:
        assert checkout.build_dir == checkout.root / "services" / "web"
        assert (checkout.build_dir / "Dockerfile").read_text() == "v3\n"


def test_the_clone_includes_submodules(tmp_path: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "lib.txt").write_text("library code\n")
    git(library, "init", "-q")
    git(library, "add", "-A")
    git(library, "commit", "-qm", "lib")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "submodule", "add", "-q", "../library", "vendor/library")
    git(repo, "commit", "-qm", "with submodule")
    with _build_engine.git_clone(repo, "app") as checkout:
        assert (
            checkout.build_dir / "vendor" / "library" / "lib.txt"
        ).read_text() == "library code\n"


def test_not_a_repository_or_no_commit_says_what_to_do(tmp_path: Path) -> None:
    with (
        pytest.raises(ShipyardError, match=r"not in a git repository.*builder.context: \."),
        _build_engine.git_clone(tmp_path, "app"),
    ):
        pass
    git(tmp_path, "init", "-q")
    with (
        pytest.raises(ShipyardError, match="no commit yet"),
        _build_engine.git_clone(tmp_path, "app"),
    ):
        pass


# --- registry credentials --------------------------------------------------------------


def test_credentials_are_literals_or_secrets() -> None:
    secrets = {"REGISTRY_PASSWORD": "s3cret", "REGISTRY_USER": "robot"}
    assert auth_config("ghcr.io", "me", ["REGISTRY_PASSWORD"], secrets.__getitem__) == {
        "username": "me",
        "password": "s3cret",
        "serveraddress": "ghcr.io",
    }
    assert auth_config(None, ["REGISTRY_USER"], "literal", secrets.__getitem__) == {
        "username": "robot",
        "password": "literal",
        "serveraddress": "https://index.docker.io/v1/",
    }
    assert auth_config("ghcr.io", None, None, secrets.__getitem__) is None
    with pytest.raises(ShipyardError, match=r"registry.password is not set"):
        auth_config("ghcr.io", "me", None, secrets.__getitem__)


def test_registry_auth_reads_the_secrets_and_redacts_a_literal_password(
    shipyard_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    shipyard_project.write_config(
        {**LOCAL, "registry": {"server": "ghcr.io", "username": "me", "password": "plain-pw"}}
    )
    ctx = shipyard_project.context("build", "push")
    assert docker_build.registry_auth(ctx) == {
        "username": "me",
        "password": "plain-pw",
        "serveraddress": "ghcr.io",
    }
    ctx.output.info("token plain-pw")
    assert capsys.readouterr().out == "token [REDACTED]\n"

    shipyard_project.write_config(
        {**LOCAL, "registry": {"server": "ghcr.io", "username": "me", "password": ["PW"]}}
    )
    shipyard_project.write_secrets("PW=from-secrets\n")
    assert (
        docker_build.registry_auth(shipyard_project.context("build", "push"))["password"]
        == "from-secrets"
    )

    shipyard_project.write_config(LOCAL)
    assert (
        docker_build.registry_auth(shipyard_project.context("build", "push")) is None
    )  # local: no account


# --- the local registry ----------------------------------------------------------------

SETTINGS = LocalRegistrySettings()


@pytest.mark.parametrize(
    ("probe", "container", "action"),
    [
        ("registry", None, "reuse"),
        (
            "registry",
            RegistryContainer(running=False, host_port=9999),
            "reuse",
        ),  # whoever it is, it answers
        ("other", None, "fail"),
        ("closed", None, "run"),
        ("closed", RegistryContainer(running=False, host_port=5555), "start"),
        ("closed", RegistryContainer(running=False, host_port=None), "start"),
        ("closed", RegistryContainer(running=True, host_port=5555), "wait"),
        ("closed", RegistryContainer(running=False, host_port=6000), "fail"),
    ],
)
def test_local_registry_decision(
    probe: Any, container: RegistryContainer | None, action: str
) -> None:
    assert decide_local_registry(5555, probe, container, SETTINGS, 404).action == action


def test_local_registry_failures_explain_themselves() -> None:
    other = decide_local_registry(5555, "other", None, SETTINGS, 404)
    assert "not as a registry (GET /v2/ returned 404)" in other.reason
    moved = decide_local_registry(5555, "closed", RegistryContainer(False, 6000), SETTINGS)
    assert (
        "publishes port 6000, not 5555" in moved.reason
        and "docker rm -f shipyard-registry" in moved.reason
    )
    run = decide_local_registry(5555, "closed", None, LocalRegistrySettings(image="my/registry:1"))
    assert "my/registry:1" in run.reason and "127.0.0.1:5555" in run.reason


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, "registry"), (401, "registry"), (404, "other"), (500, "other"), (None, "closed")],
)
def test_probe_kind(status: int | None, kind: str) -> None:
    assert probe_kind(status) == kind


def test_local_registry_settings() -> None:
    assert LocalRegistrySettings.parse(None) == LocalRegistrySettings(
        "registry:2", "shipyard-registry"
    )
    assert LocalRegistrySettings.parse({"image": "registry:local"}).image == "registry:local"
    with pytest.raises(ShipyardError) as error:
        LocalRegistrySettings.parse({"image": 3, "port": 1})
    assert str(error.value).splitlines() == [
        "x-shipyard.local_registry.port: unknown setting (known: image, container)",
        "x-shipyard.local_registry.image: expected a non-empty string",
    ]
    assert local_registry_port("localhost:5555") == 5555


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def http_answer() -> Iterator[Any]:
    """A server on a loopback port answering every GET with the status it is set to."""

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self) -> None:
            self.send_response(self.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_probe_registry(http_answer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")  # loopback probes ignore proxies
    address = f"127.0.0.1:{http_answer.server_address[1]}"
    for status in (200, 401, 404):
        http_answer.RequestHandlerClass.status = status
        assert docker_build.probe_registry(address) == status
    assert docker_build.probe_registry(f"127.0.0.1:{_free_port()}") is None


class FakeEngine:
    """Stands in for the Docker engine: records calls, answers from scripts."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.build_events: list[dict[str, Any]] = [
            {"stream": "Step 1/1 : FROM x\n"},
            {"aux": {"ID": "sha256:" + "ab" * 32}},
        ]
        self.push_events: list[dict[str, Any]] = []
        self.container: RegistryContainer | None = None
        self.arch = "amd64"

    def version(self) -> dict[str, str]:
        return {"Version": "20.10.24", "ApiVersion": "1.41", "Os": "linux", "Arch": self.arch}

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        context = kwargs["context"]
        self.calls.append(
            ("build", {**kwargs, "files": sorted(p.name for p in Path(context).iterdir())})
        )
        yield from self.build_events

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.calls.append(("tag", (image, repository, tag)))

    def image_layers(self, reference: str) -> int:
        return 2

    def push(
        self, repository: str, tag: str, auth: dict[str, str] | None
    ) -> Iterator[dict[str, Any]]:
        self.calls.append(("push", (repository, tag, auth)))
        yield from self.push_events

    def login(self, auth: dict[str, str]) -> None:
        self.calls.append(("login", auth))

    def registry_container(self, name: str) -> RegistryContainer | None:
        return self.container

    def run_registry(self, name: str, image: str, port: int) -> None:
        self.calls.append(("run_registry", (name, image, port)))

    def start_container(self, name: str) -> None:
        self.calls.append(("start", name))

    def close(self) -> None:
        pass


def _with_engine(ctx: Any) -> FakeEngine:
    fake = FakeEngine()
    docker_build._run(ctx).engine = fake  # type: ignore[assignment]
    return fake


def test_a_registry_answering_is_reused_and_a_missing_one_started(
    shipyard_project: Project, http_answer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = http_answer.server_address[1]
    shipyard_project.write_config({**LOCAL, "registry": {"server": f"127.0.0.1:{port}"}})
    ctx = shipyard_project.context("build", "push")
    fake = _with_engine(ctx)
    docker_build.prepare_registry(ctx)
    assert fake.calls == []

    free = _free_port()
    shipyard_project.write_config(
        {
            **LOCAL,
            "registry": {"server": f"127.0.0.1:{free}"},
            "x-shipyard": {"local_registry": {"image": "registry:local"}},
        }
    )
    ctx = shipyard_project.context("build", "push")
    fake = _with_engine(ctx)
    answers = iter([None, None, 200])  # closed; still starting; up
    monkeypatch.setattr(docker_build, "probe_registry", lambda server: next(answers))
    docker_build.prepare_registry(ctx)
    assert fake.calls == [("run_registry", ("shipyard-registry", "registry:local", free))]
    docker_build.prepare_registry(ctx)  # once per run
    assert len(fake.calls) == 1


def test_a_port_taken_by_something_else_fails(shipyard_project: Project, http_answer: Any) -> None:
    http_answer.RequestHandlerClass.status = 404
    shipyard_project.write_config(
        {**LOCAL, "registry": {"server": f"localhost:{http_answer.server_address[1]}"}}
    )
    ctx = shipyard_project.context("build", "push")
    _with_engine(ctx)
    with pytest.raises(ShipyardError, match="not as a registry"):
        docker_build.prepare_registry(ctx)


def test_a_remote_registry_is_logged_in_to_through_the_engine(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {**LOCAL, "registry": {"server": "ghcr.io", "username": "me", "password": ["PW"]}}
    )
    shipyard_project.write_secrets("PW=hunter22\n")
    ctx = shipyard_project.context("build", "push")
    fake = _with_engine(ctx)
    docker_build.prepare_registry(ctx)
    assert fake.calls == [
        ("login", {"username": "me", "password": "hunter22", "serveraddress": "ghcr.io"})
    ]


# --- reading build output --------------------------------------------------------------

# Recorded from dockerd 20.10 (docker-py `APIClient.build(decode=True)`).
CLASSIC_FAILURE: list[dict[str, Any]] = [
    {"stream": "Step 1/4 : FROM busybox:local"},
    {"stream": "\n"},
    {"stream": " ---> 6400096f1647\n"},
    {"stream": "Step 2/4 : RUN echo preparing"},
    {"stream": "\n"},
    {"stream": " ---> Running in c0a7bfcad51a\n"},
    {"stream": "preparing\n"},
    {"stream": "Removing intermediate container c0a7bfcad51a\n"},
    {"stream": " ---> 52d76a10103d\n"},
    {"stream": "Step 3/4 : RUN echo one && echo two >&2 && exit 3"},
    {"stream": "\n"},
    {"stream": " ---> Running in 2cfafb78b95c\n"},
    {"stream": "one\n"},
    {"stream": "\u001b[91mtwo\n\u001b[0m"},
    {"stream": "Removing intermediate container 2cfafb78b95c\n"},
    {
        "errorDetail": {
            "code": 3,
            "message": "The command '/bin/sh -c echo one && echo two >&2 && exit 3' returned a non-zero code: 3",
        },
        "error": "The command '/bin/sh -c echo one && echo two >&2 && exit 3' returned a non-zero code: 3",
    },
]

# Recorded from `DOCKER_BUILDKIT=1 docker build --progress=plain` (CLI and dockerd 20.10).
BUILDKIT_FAILURE = """\
#1 [internal] load build definition from Dockerfile
#1 sha256:d442a99426ab74ce7185dc225950ce09c23dff6e87e7dc54ca0bb9a23032edd0
#1 transferring dockerfile: 125B done
#1 DONE 0.0s

#6 [1/3] FROM docker.io/library/busybox:local
#6 CACHED

#4 [2/3] RUN echo preparing
#4 0.305 preparing
#4 DONE 0.3s

#5 [3/3] RUN echo one && echo two >&2 && exit 3
#5 sha256:ed12535469948981c5336e6fdabfb4f77fdb8feb6e8de3124c0d4d8c838eb454
#5 0.640 two
#5 0.640 one
#5 ERROR: executor failed running [/bin/sh -c echo one && echo two >&2 && exit 3]: exit code: 3
------
 > [3/3] RUN echo one && echo two >&2 && exit 3:
#5 0.640 two
#5 0.640 one
------
executor failed running [/bin/sh -c echo one && echo two >&2 && exit 3]: exit code: 3
"""


def test_a_classic_failure_names_the_step_its_last_lines_and_the_error() -> None:
    log = BuildLog()
    shown = [line for event in CLASSIC_FAILURE for line in log.feed_event(event)]
    assert "Step 3/4 : RUN echo one && echo two >&2 && exit 3" in shown
    assert not any("\u001b" in line for line in shown)
    assert log.failure_message("Build of app:v1").splitlines() == [
        "Build of app:v1 failed at Step 3/4 : RUN echo one && echo two >&2 && exit 3",
        "  one",
        "  two",
        "  The command '/bin/sh -c echo one && echo two >&2 && exit 3' returned a non-zero code: 3",
    ]


def test_the_failure_shows_only_the_last_lines_of_a_long_step() -> None:
    log = BuildLog()
    log.feed_event({"stream": "Step 1/1 : RUN make\n"})
    for number in range(100):
        log.feed_event({"stream": f"line {number}\n"})
    log.feed_event({"error": "boom"})
    lines = log.failure_message("Build").splitlines()
    assert lines[1:] == [f"  line {n}" for n in range(88, 100)] + ["  boom"]


def test_an_error_before_any_step_is_shown_alone() -> None:
    log = BuildLog()
    log.feed_event({"error": "dockerfile parse error line 2: unknown instruction: FOO"})
    assert log.failure_message("Build of app:v1").splitlines() == [
        "Build of app:v1 failed:",
        "  dockerfile parse error line 2: unknown instruction: FOO",
    ]


def test_the_classic_image_id_and_steps_are_followed() -> None:
    log = BuildLog()
    log.feed_event({"stream": "Step 1/2 : FROM x"})
    assert not log.new_step  # the title is not complete yet
    log.feed_event({"stream": "\nStep 2/2 : CMD y\n"})
    assert log.new_step and [s.title for s in log.steps] == [
        "Step 1/2 : FROM x",
        "Step 2/2 : CMD y",
    ]
    log.feed_event({"aux": {"ID": "sha256:abc"}})
    assert log.image_id == "sha256:abc" and log.error is None


def test_a_buildkit_failure_names_the_step_its_last_lines_and_the_error() -> None:
    log = BuildLog()
    steps = 0
    for line in BUILDKIT_FAILURE.splitlines():
        log.feed_line(line)
        steps += log.new_step
    assert steps == 3  # the internal steps do not count
    assert log.failure_message("Build of app:v1").splitlines() == [
        "Build of app:v1 failed at [3/3] RUN echo one && echo two >&2 && exit 3",
        "  two",
        "  one",
        "  executor failed running [/bin/sh -c echo one && echo two >&2 && exit 3]: exit code: 3",
    ]


def test_a_buildkit_parse_error_shows_the_cli_s_last_words() -> None:
    log = BuildLog()
    for line in [
        "#1 [internal] load build definition from Dockerfile",
        "#1 transferring dockerfile: 64B done",
        "#1 DONE 0.0s",
        "failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
        "dockerfile parse error line 2: unknown instruction: FOO",
    ]:
        log.feed_line(line)
    assert log.failure_message("Build").splitlines() == [
        "Build failed:",
        "  failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
        "dockerfile parse error line 2: unknown instruction: FOO",
    ]


# --- push progress ---------------------------------------------------------------------

# Recorded from dockerd 20.10 (docker-py `APIClient.push(stream=True, decode=True)`).
PUSH_EVENTS: list[dict[str, Any]] = [
    {"status": "The push refers to repository [localhost:5555/smoke]"},
    {"status": "Preparing", "progressDetail": {}, "id": "fce1f395f1a2"},
    {"status": "Preparing", "progressDetail": {}, "id": "17524850d21a"},
    {"status": "Mounted from lab-selftest", "progressDetail": {}, "id": "17524850d21a"},
    {
        "status": "Pushing",
        "progressDetail": {"current": 512, "total": 1024},
        "progress": "[==>  ]",
        "id": "fce1f395f1a2",
    },
    {
        "status": "Pushing",
        "progressDetail": {"current": 1024, "total": 1024},
        "progress": "[=====>]",
        "id": "fce1f395f1a2",
    },
    {"status": "Pushed", "progressDetail": {}, "id": "fce1f395f1a2"},
    {
        "status": "v1: digest: sha256:50dd291dcde75c536719a99adf474e78c228ad63e18941200d36afcaaf36b5b4 size: 735"
    },
    {
        "progressDetail": {},
        "aux": {
            "Tag": "v1",
            "Digest": "sha256:50dd291dcde75c536719a99adf474e78c228ad63e18941200d36afcaaf36b5b4",
            "Size": 735,
        },
    },
]


def test_push_progress_counts_layers_and_shows_each_change_once() -> None:
    tracker = PushTracker()
    updates = [tracker.feed(event) for event in PUSH_EVENTS]
    assert sum(u.advance for u in updates) == 2
    details = [u.detail for u in updates if u.detail]
    assert details == [
        "The push refers to repository [localhost:5555/smoke]",
        "fce1f395f1a2: Preparing",
        "17524850d21a: Preparing",
        "17524850d21a: Mounted from lab-selftest",
        "fce1f395f1a2: Pushing",
        "fce1f395f1a2: Pushed",
        "v1: digest: sha256:50dd291dcde75c536719a99adf474e78c228ad63e18941200d36afcaaf36b5b4 size: 735",
    ]
    assert (
        tracker.digest == "sha256:50dd291dcde75c536719a99adf474e78c228ad63e18941200d36afcaaf36b5b4"
    )
    assert tracker.error is None


def test_a_push_error_fails_with_a_hint(shipyard_project: Project) -> None:
    shipyard_project.write_config({**LOCAL, "registry": {"server": "ghcr.io"}})
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    fake.push_events = [
        {"status": "Preparing", "id": "aa"},
        {
            "errorDetail": {"message": "unauthorized: authentication required"},
            "error": "unauthorized",
        },
    ]
    with pytest.raises(
        ShipyardError,
        match=r"Pushing ghcr.io/app:v1 failed: unauthorized: authentication required "
        r"\(check registry.username and registry.password\)",
    ):
        docker_build.shipyard_push(
            ctx, BuildResult("sha256:x", ("ghcr.io/app:v1", "ghcr.io/app:latest"))
        )
    assert [c[0] for c in fake.calls] == ["push"]  # stopped at the first failure


def test_push_pushes_both_tags_with_the_credentials(shipyard_project: Project) -> None:
    shipyard_project.write_config(
        {**LOCAL, "registry": {"server": "ghcr.io", "username": "me", "password": ["PW"]}}
    )
    shipyard_project.write_secrets("PW=hunter22\n")
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    fake.push_events = PUSH_EVENTS
    result = docker_build.shipyard_push(
        ctx, BuildResult("sha256:x", ("ghcr.io/app:v1", "ghcr.io/app:latest"))
    )
    assert result.references == ("ghcr.io/app:v1", "ghcr.io/app:latest")
    auth = {"username": "me", "password": "hunter22", "serveraddress": "ghcr.io"}
    assert [c for c in fake.calls if c[0] == "push"] == [
        ("push", ("ghcr.io/app", "v1", auth)),
        ("push", ("ghcr.io/app", "latest", auth)),
    ]


# --- the build step, wired to a fake engine ---------------------------------------------


def _app(project: Project, config: dict[str, Any]) -> None:
    project.write_config(config)
    project.write("Dockerfile", 'FROM busybox:local\nCMD ["true"]\n')
    project.write("committed.txt", "yes\n")
    project.git_init()
    project.write("dirty.txt", "not committed\n")


def test_the_default_build_uses_the_clone_and_passes_every_setting(
    shipyard_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    _app(shipyard_project, {**LOCAL, "builder": {"args": {"A": 1, "FLAG": True}, "target": "prod"}})
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    from shipyard.core.build import BuildOptions, set_build_options

    set_build_options(ctx, BuildOptions(no_cache=True))
    result = docker_build.shipyard_build(ctx)
    assert result == BuildResult(
        "sha256:" + "ab" * 32, ("localhost:5555/app:v1", "localhost:5555/app:latest")
    )
    (name, build), tag = fake.calls
    assert name == "build"
    assert build["files"] == [
        ".git",
        "Dockerfile",
        "committed.txt",
        "config",
    ]  # no dirty.txt: a clean clone
    assert build["dockerfile"] == Path(build["context"]) / "Dockerfile"
    assert (build["tag"], build["args"], build["labels"], build["target"], build["no_cache"]) == (
        "localhost:5555/app:v1",
        {"A": "1", "FLAG": "true"},
        {"service": "app"},
        "prod",
        True,
    )
    assert tag == ("tag", ("sha256:" + "ab" * 32, "localhost:5555/app", "latest"))
    assert not Path(build["context"]).exists()  # the clone is gone
    assert "ignoring these uncommitted changes" in capsys.readouterr().err


def test_a_working_tree_build_includes_the_dirty_files(shipyard_project: Project) -> None:
    _app(shipyard_project, {**LOCAL, "builder": {"context": "."}})
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    docker_build.shipyard_build(ctx)
    build = fake.calls[0][1]
    assert build["context"] == shipyard_project.path.resolve()
    assert "dirty.txt" in build["files"] and build["no_cache"] is False


def test_a_failed_build_raises_the_step_and_tags_nothing(shipyard_project: Project) -> None:
    _app(shipyard_project, LOCAL)
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    fake.build_events = CLASSIC_FAILURE
    with pytest.raises(ShipyardError) as error:
        docker_build.shipyard_build(ctx)
    assert str(error.value).startswith(
        "Build of localhost:5555/app:v1 failed at Step 3/4 : RUN echo one"
    )
    assert [c[0] for c in fake.calls] == ["build"]


def test_builder_arch_must_include_the_engine_s(
    shipyard_project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    _app(shipyard_project, {**LOCAL, "builder": {"arch": "arm64"}})
    ctx = shipyard_project.context("build", "push", version="v1")
    _with_engine(ctx)
    with pytest.raises(
        ShipyardError, match=r"builder\.arch is arm64, but this engine builds amd64 images only"
    ):
        docker_build.shipyard_build(ctx)
    _app(
        shipyard_project,
        {**LOCAL, "builder": {"arch": ["amd64", "arm64"], "cache": {"type": "gha"}}},
    )
    ctx = shipyard_project.context("build", "push", version="v1")
    _with_engine(ctx)
    docker_build.shipyard_build(ctx)
    err = capsys.readouterr().err
    assert "builder.cache: not supported by the classic builder; ignored" in err
    assert "building amd64 only; the classic builder cannot build arm64" in err


def test_a_missing_build_secret_fails_before_building(shipyard_project: Project) -> None:
    _app(shipyard_project, {**LOCAL, "builder": {"secrets": ["NPM_TOKEN"]}})
    ctx = shipyard_project.context("build", "push", version="v1")
    fake = _with_engine(ctx)
    with pytest.raises(ShipyardError, match="Secret 'NPM_TOKEN' not found"):
        docker_build.shipyard_build(ctx)
    assert fake.calls == []


# --- build secrets ---------------------------------------------------------------------


def test_the_buildkit_command_carries_secret_files_never_values(tmp_path: Path) -> None:
    value = "very-secret-value"
    path = docker_build._write_private(tmp_path / "secret-0", value)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == value
    command = buildkit_command(
        "/usr/bin/docker",
        context=tmp_path,
        dockerfile=tmp_path / "Dockerfile",
        tags=["r/app:v1", "r/app:latest"],
        labels={"service": "app"},
        args={"A": "1"},
        target="prod",
        no_cache=True,
        secret_files={"NPM_TOKEN": path},
        iidfile=tmp_path / "iid",
    )
    assert command.env == {"DOCKER_BUILDKIT": "1"}
    assert value not in " ".join(command.argv)
    assert list(command.argv) == [
        "/usr/bin/docker",
        "build",
        "--progress=plain",
        "--iidfile",
        str(tmp_path / "iid"),
        "--tag",
        "r/app:v1",
        "--tag",
        "r/app:latest",
        "--label",
        "service=app",
        "--build-arg",
        "A=1",
        "--secret",
        f"id=NPM_TOKEN,src={path}",
        "--file",
        str(tmp_path / "Dockerfile"),
        "--target",
        "prod",
        "--no-cache",
        str(tmp_path),
    ]


def test_secret_names_must_be_buildkit_ids() -> None:
    assert check_secret_names(["NPM_TOKEN", "a.b-c"]) == ["NPM_TOKEN", "a.b-c"]
    with pytest.raises(ShipyardError, match="'A,B' cannot be a BuildKit secret id"):
        check_secret_names(["A,B"])


@pytest.mark.parametrize(
    ("text", "builtin"),
    [
        ("Docker version 20.10.24+dfsg1, build 297e128", True),
        ("Docker version 22.06.0-beta.0, build x", True),
        ("Docker version 28.2.2, build e6534b4", False),
        ("nonsense", False),
    ],
)
def test_which_clis_have_buildkit_built_in(text: str, builtin: bool) -> None:
    assert cli_has_builtin_buildkit(text) is builtin


def _fake_cli(directory: Path, version: str, *, buildx: bool) -> Path:
    directory.mkdir(parents=True)
    cli = directory / "docker"
    cli.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = buildx ]; then exit {0 if buildx else 1}; fi\n'
        f'echo "Docker version {version}, build x"\n'
    )
    cli.chmod(0o755)
    return cli


def test_a_buildkit_cli_is_found_or_the_error_says_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = _fake_cli(tmp_path / "new", "28.2.2", buildx=False)
    old = _fake_cli(tmp_path / "old", "20.10.24", buildx=False)
    monkeypatch.setattr(_build_engine, "_docker_clis", lambda: [str(new), str(old)])
    assert _build_engine.find_buildkit_cli() == str(old)
    with_buildx = _fake_cli(tmp_path / "buildx", "28.2.2", buildx=True)
    monkeypatch.setattr(_build_engine, "_docker_clis", lambda: [str(with_buildx), str(old)])
    assert _build_engine.find_buildkit_cli() == str(with_buildx)
    assert _build_engine.find_buildkit_cli(str(old)) == str(
        old
    )  # x-shipyard.docker_build.buildkit_cli
    monkeypatch.setattr(_build_engine, "_docker_clis", lambda: [str(new)])
    with pytest.raises(
        ShipyardError,
        match=r"install the buildx plugin.*tried: .*Docker version 28.2.2, build x, no buildx",
    ):
        _build_engine.find_buildkit_cli()


# --- the commands --------------------------------------------------------------------------


def test_build_create_and_remove_have_nothing_to_do(shipyard_project: Project) -> None:
    shipyard_project.write_config(LOCAL)
    for name in ("create", "remove"):
        result = shipyard_project.run("build", name).assert_ok()
        assert "classic builder, which needs no setup" in result.stdout


def test_build_pull_pulls_on_every_host_and_checks_the_service_label(
    shipyard_project: Project, shipyard_fake_transport: FakeTransportKit
) -> None:
    shipyard_project.write_config({**LOCAL, "registry": {"server": "registry.example.com"}})
    service = LOCAL["service"]
    shipyard_fake_transport.respond(r"docker pull", stdout=f"{service}\n")
    result = shipyard_project.run("build", "pull", "--version", "v9").assert_ok()
    assert f"Pulled registry.example.com/{LOCAL['image']}:v9" in result.stdout
    shipyard_fake_transport.respond(r"docker pull", stdout="someone-else\n")
    failed = shipyard_project.run("build", "pull", "--version", "v9")
    assert failed.exit_code == 1 and f"is missing the label service={service}" in failed.stderr


REPLACING_PLUGIN = """
from shipyard.core.build import build_options
from shipyard.core.records import BuildResult, PushResult

def shipyard_build(ctx):
    return BuildResult("sha256:fake", ("r/app:" + ctx.version, "r/app:no-cache-" + str(build_options(ctx).no_cache)))

def shipyard_push(ctx, build):
    return PushResult(build.tags)
"""


def test_build_push_fires_the_hooks_in_order_and_passes_no_cache(
    shipyard_project: Project, shipyard_hook_recorder: Any
) -> None:
    shipyard_project.write_config(LOCAL)
    shipyard_project.write_hooks_py(REPLACING_PLUGIN)
    shipyard_project.run(
        "build", "push", "--no-cache", "--version", "v9", "--no-plugin", "docker_build"
    ).assert_ok()
    names = [
        n
        for n in shipyard_hook_recorder.names()
        if n in ("pre_connect", "pre_build", "build", "push", "post_push")
    ]
    assert names == ["pre_connect", "pre_build", "build", "push", "post_push"]
    assert shipyard_hook_recorder.getcalls("push")[0].result.references == (
        "r/app:v9",
        "r/app:no-cache-True",
    )


def test_a_failing_pre_build_hook_stops_before_the_build(
    shipyard_project: Project, shipyard_hook_recorder: Any
) -> None:
    shipyard_project.write_config(LOCAL)
    shipyard_project.write_hooks_py(REPLACING_PLUGIN)
    shipyard_project.write_shell_hook("pre-build", "#!/bin/sh\necho not today\nexit 1\n")
    result = shipyard_project.run(
        "build", "push", "--version", "v9", "--no-plugin", "docker_build"
    ).assert_failed(1)
    assert "not today" in result.stderr
    assert "build" not in shipyard_hook_recorder.names()


def test_build_dev_and_details_need_the_plugin(shipyard_project: Project) -> None:
    shipyard_project.write_config(LOCAL)
    for name in ("dev", "details"):
        result = shipyard_project.run("build", name, "--no-plugin", "docker_build").assert_failed(1)
        assert "the docker_build plugin is disabled" in result.stderr


def test_details_text() -> None:
    text = docker_build.details_text(
        {
            "engine": {
                "address": "unix:///var/run/docker.sock",
                "version": "20.10.24",
                "api_version": "1.41",
                "platform": "linux/amd64",
            },
            "builder": "classic",
            "secrets_builder": "BuildKit via the docker build CLI",
            "context": "git clone of HEAD",
            "dockerfile": "Dockerfile",
            "repository": "localhost:5555/app",
            "tags": ["localhost:5555/app:v1", "localhost:5555/app:latest"],
            "registry": "localhost:5555",
            "local_registry": True,
        }
    )
    assert text.splitlines() == [
        "Engine:     Docker 20.10.24 (API 1.41, linux/amd64) at unix:///var/run/docker.sock",
        "Builder:    classic (builder.secrets: BuildKit via the docker build CLI)",
        "Context:    git clone of HEAD",
        "Dockerfile: Dockerfile",
        "Repository: localhost:5555/app",
        "Tags:       localhost:5555/app:v1, localhost:5555/app:latest",
        "Registry:   localhost:5555 (local registry on this machine)",
    ]


def test_the_plugin_imports_no_docker_until_it_builds() -> None:
    code = "import sys, shipyard.plugins.docker_build, shipyard.core.build; print('docker' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.stdout.strip() == "False"
