"""`shipyard build ...` against the deployer's real dockerd and registry (the lab's root
namespace): the image lands in the registry with its tags and label, the context is a
clean clone unless `builder.context` says otherwise, build args, targets and secrets work
(and the secret is in no layer and no history), failures show the step and push nothing,
and a failing pre-build hook stops everything."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import LabProject

REGISTRY = "localhost:5555"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The deployer's docker CLI (the root dockerd)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=300
    )


def registry_get(
    path: str, *, registry: str = REGISTRY, accept: str | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{registry}{path}", headers={"Accept": accept} if accept else {}
    )
    try:
        with _NO_PROXY.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def registry_tags(repository: str, *, registry: str = REGISTRY) -> list[str]:
    status, body = registry_get(f"/v2/{repository}/tags/list", registry=registry)
    if status == 404:
        return []
    assert status == 200, body
    return sorted(json.loads(body).get("tags") or [])


def registry_image_config(repository: str, tag: str) -> dict[str, Any]:
    """The image config (labels, cmd...) as stored in the registry."""
    status, body = registry_get(
        f"/v2/{repository}/manifests/{tag}",
        accept="application/vnd.docker.distribution.manifest.v2+json",
    )
    assert status == 200, body
    digest = json.loads(body)["config"]["digest"]
    status, blob = registry_get(f"/v2/{repository}/blobs/{digest}")
    assert status == 200
    config: dict[str, Any] = json.loads(blob)["config"]
    return config


def run_image(reference: str, *command: str) -> str:
    return docker("run", "--rm", reference, *command).stdout


class App(LabProject):
    """A tiny app in a git repository, deployed to lab h1 with the local registry."""

    def __init__(self, path: Path, lab: Any) -> None:
        super().__init__(path, lab)
        self.service = f"bt{uuid.uuid4().hex[:10]}"
        self.repository = f"{REGISTRY}/{self.service}"

    def configure(self, **extra: Any) -> None:
        self.write_config(
            {
                "service": self.service,
                "image": self.service,
                "servers": [self.lab.hosts[0].address],
                "registry": {"server": REGISTRY},
                **extra,
            }
        )

    def write(self, relative: str, text: str, *, mode: int | None = None) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if mode is not None:
            target.chmod(mode)

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=T", *args],
            cwd=self.path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def commit(self) -> str:
        if not (self.path / ".git").exists():
            self.git("init", "-q")
        self.git("add", "-A")
        self.git("commit", "-qm", "change", "--allow-empty")
        return self.git("rev-parse", "HEAD")

    def local_images(self) -> list[str]:
        listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", self.repository).stdout
        return sorted(line for line in listed.splitlines() if line.strip())


@pytest.fixture
def app(tmp_path: Path, lab: Any) -> Iterator[App]:
    project = App(tmp_path / "app", lab)
    project.configure()
    project.write(
        "Dockerfile",
        'FROM busybox:local\nCOPY version.txt /version.txt\nCMD ["cat", "/version.txt"]\n',
    )
    project.write("version.txt", "committed\n")
    project.commit()
    yield project
    for image in project.local_images():
        docker("image", "rm", "--force", image, check=False)
    docker("image", "prune", "--force", "--filter", f"label=service={project.service}", check=False)


def test_build_push_puts_both_tags_in_the_registry_with_the_service_label(app: App) -> None:
    result = app.run("build", "push").ok()
    assert registry_tags(app.service) == ["latest", "v-test"]
    config = registry_image_config(app.service, "v-test")
    assert config["Labels"]["service"] == app.service
    assert config["Cmd"] == ["cat", "/version.txt"]
    assert f"Pushed {app.repository}:v-test (sha256:" in result.stdout
    assert f"Pushed {app.repository}:latest (sha256:" in result.stdout
    # both tags are one image
    assert registry_image_config(app.service, "latest") == config


def test_the_version_comes_from_the_flag_then_the_environment_then_git(app: App) -> None:
    app.run("build", "push", "--version", "from-flag").ok()
    app.run("build", "push", env=app.env(VERSION="from-env")).ok()
    env = app.env()
    del env["VERSION"]
    sha = app.git("rev-parse", "HEAD")
    app.run("build", "push", env=env).ok()
    assert registry_tags(app.service) == sorted(["from-flag", "from-env", sha, "latest"])


def test_a_destination_tags_latest_dash_destination(app: App) -> None:
    (app.path / "config" / "deploy.staging.yml").write_text("{}\n")
    app.commit()
    app.run("build", "push", "-d", "staging").ok()
    assert registry_tags(app.service) == ["latest-staging", "v-test"]


def test_uncommitted_changes_are_left_out_of_the_default_build(app: App) -> None:
    app.write("version.txt", "dirty\n")
    result = app.run("build", "push", "-v").ok()
    assert "ignoring these uncommitted changes" in result.stderr and "version.txt" in result.stderr
    assert run_image(f"{app.repository}:v-test") == "committed\n"


def test_builder_context_dot_builds_the_working_tree_and_respects_dockerignore(app: App) -> None:
    app.configure(builder={"context": "."})
    app.write("Dockerfile", 'FROM busybox:local\nCOPY . /app/\nCMD ["cat", "/app/version.txt"]\n')
    app.write(".dockerignore", "ignored.txt\n")
    app.write("ignored.txt", "must not be copied\n")
    app.commit()
    app.write("version.txt", "dirty\n")
    app.run("build", "push", "--version", "wt").ok()
    assert run_image(f"{app.repository}:wt") == "dirty\n"
    assert run_image(f"{app.repository}:wt", "ls", "-A", "/app").split() == sorted(
        [".dockerignore", ".git", "Dockerfile", "config", "version.txt"]
    )


def test_build_args_target_and_dockerfile(app: App) -> None:
    app.configure(
        builder={
            "dockerfile": "docker/App.Dockerfile",
            "target": "release",
            "args": {"GREETING": "hello from args", "DEBUG": True},
        }
    )
    app.write(
        "docker/App.Dockerfile",
        "FROM busybox:local AS base\n"
        "ARG GREETING\nARG DEBUG\n"
        'RUN echo "$GREETING $DEBUG" > /greeting\n'
        "FROM base AS release\n"
        "RUN echo release > /stage\n"
        'CMD ["cat", "/greeting", "/stage"]\n'
        "FROM base AS test\n"
        "RUN echo test > /stage\n"
        'CMD ["cat", "/greeting", "/stage"]\n',
    )
    app.commit()
    app.run("build", "push").ok()
    assert run_image(f"{app.repository}:v-test") == "hello from args true\nrelease\n"


def test_build_secrets_reach_the_step_and_no_layer_or_history(app: App, tmp_path: Path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    app.configure(builder={"secrets": ["NPM_TOKEN"], "args": {"MODE": "prod"}})
    app.write(".shipyard/secrets", f"NPM_TOKEN={secret}\n")
    app.write(
        "Dockerfile",
        "FROM busybox:local\n"
        "ARG MODE\n"
        # (the service name makes the step new: BuildKit's cache key ignores secret values)
        f"RUN --mount=type=secret,id=NPM_TOKEN echo {app.service} && "
        "md5sum < /run/secrets/NPM_TOKEN > /token.md5\n"
        "RUN echo $MODE > /mode\n"
        'CMD ["cat", "/token.md5", "/mode"]\n',
    )
    app.commit()
    result = app.run("build", "push", "-v").ok()
    assert secret not in result.stdout + result.stderr
    reference = f"{app.repository}:v-test"
    digest = hashlib.md5(secret.encode()).hexdigest()
    assert run_image(reference) == f"{digest}  -\nprod\n"  # the step saw the secret
    assert registry_tags(app.service) == ["latest", "v-test"]
    assert registry_image_config(app.service, "v-test")["Labels"]["service"] == app.service

    history = docker("history", "--no-trunc", reference).stdout
    assert "md5sum" in history and secret not in history  # the step is there, its secret is not
    archive = tmp_path / "image.tar"
    docker("save", "--output", str(archive), reference)
    needle = secret.encode()
    with tarfile.open(archive) as saved:
        members = [m for m in saved.getmembers() if m.isfile()]
        layers = [m for m in members if m.name.endswith("layer.tar")]
        assert layers
        for member in members:  # manifest, image config, every layer
            data = saved.extractfile(member).read()  # type: ignore[union-attr]
            assert needle not in data, member.name
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=saved.extractfile(member)) as layer:  # type: ignore[arg-type]
                    # BuildKit may leave the empty mount point run/secrets; never a file in it
                    names = [entry.name for entry in layer.getmembers()]
                    assert not [name for name in names if name.startswith("run/secrets/")], names
    assert not list(
        Path(tempfile.gettempdir()).glob("shipyard-build-secrets-*")
    )  # the secret files are gone


def test_a_broken_build_shows_the_failing_step_and_pushes_nothing(app: App) -> None:
    app.write(
        "Dockerfile",
        "FROM busybox:local\nRUN echo first step\n"
        "RUN echo compiling && echo 'cc: error: broken.c' >&2 && exit 7\nCMD [\"true\"]\n",
    )
    app.commit()
    result = app.run("build", "push")
    assert result.exit_code == 1, result
    lines = result.stderr.strip().splitlines()
    assert (
        f"Error: Build of {app.repository}:v-test failed at Step 3/5 : RUN echo compiling"
        in lines[-4]
    )
    assert sorted(lines[-3:-1]) == ["Error:   cc: error: broken.c", "Error:   compiling"]
    assert lines[-1].startswith("Error:   The command '/bin/sh -c echo compiling") and lines[
        -1
    ].endswith("returned a non-zero code: 7")
    assert "first step" not in result.stderr
    assert registry_tags(app.service) == []


def test_a_broken_secrets_build_shows_the_failing_step_too(app: App) -> None:
    app.configure(builder={"secrets": ["TOKEN"]})
    app.write(".shipyard/secrets", "TOKEN=abc-secret-value\n")
    app.write(
        "Dockerfile",
        "FROM busybox:local\nRUN --mount=type=secret,id=TOKEN sh -c 'echo checking; exit 4'\nCMD [\"true\"]\n",
    )
    app.commit()
    result = app.run("build", "push")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-3]
        == "Error: Build of "
        + app.repository
        + ":v-test failed at [2/2] RUN --mount=type=secret,id=TOKEN sh -c 'echo checking; exit 4'"
    )
    assert lines[-2] == "Error:   checking"
    assert "exit code: 4" in lines[-1]
    assert registry_tags(app.service) == []


def test_a_failing_pre_build_hook_stops_before_anything_is_built(app: App) -> None:
    app.write(
        ".shipyard/hooks/pre-build",
        '#!/bin/sh\necho "not on $SHIPYARD_VERSION"\nexit 1\n',
        mode=0o755,
    )
    app.commit()
    result = app.run("build", "push")
    assert result.exit_code == 1
    assert "Hook `pre-build` failed (exit 1)" in result.stderr and "not on v-test" in result.stderr
    assert registry_tags(app.service) == []
    assert app.local_images() == []


def test_no_cache_rebuilds_every_step(app: App) -> None:
    app.write("Dockerfile", 'FROM busybox:local\nRUN date +%s%N > /built\nCMD ["cat", "/built"]\n')
    app.commit()
    app.run("build", "push", "--version", "one").ok()
    app.run("build", "push", "--version", "two").ok()
    assert run_image(f"{app.repository}:one") == run_image(f"{app.repository}:two")  # cached
    app.run("build", "push", "--version", "three", "--no-cache").ok()
    assert run_image(f"{app.repository}:three") != run_image(f"{app.repository}:one")


def test_build_dev_builds_the_working_tree_without_pushing(app: App) -> None:
    app.write("version.txt", "work in progress\n")
    result = app.run("build", "dev").ok()
    assert f"{app.repository}:dirty is in the local image store (not pushed)" in result.stdout
    assert run_image(f"{app.repository}:dirty") == "work in progress\n"
    assert registry_tags(app.service) == []


def test_build_details_create_and_remove(app: App) -> None:
    details = app.run("build", "details").ok().stdout
    assert "Builder:    classic\n" in details
    assert "Context:    git clone of HEAD\n" in details
    assert f"Tags:       {app.repository}:v-test, {app.repository}:latest\n" in details
    assert "Engine:     Docker 20.10" in details
    data = json.loads(app.run("build", "details", "--json").ok().stdout)
    assert data["event"] == "build_details" and data["data"]["local_registry"] is True
    assert "needs no setup" in app.run("build", "create").ok().stdout
    assert "needs no setup" in app.run("build", "remove").ok().stdout


REGISTRY_CONFIG = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
"""


@pytest.fixture
def registry_image(tmp_path: Path) -> Iterator[str]:
    """A registry image made here (nothing can be pulled): Debian's distribution registry
    binary on the lab's Debian base image."""
    name = f"shipyard-test-registry:{uuid.uuid4().hex[:8]}"
    context = tmp_path / "registry-image"
    context.mkdir()
    (context / "registry").write_bytes(Path("/usr/bin/docker-registry").read_bytes())
    (context / "config.yml").write_text(REGISTRY_CONFIG)
    (context / "Dockerfile").write_text(
        "FROM pybase:local\nCOPY registry /bin/registry\nCOPY config.yml /etc/registry.yml\n"
        'RUN chmod 755 /bin/registry\nENTRYPOINT ["/bin/registry", "serve", "/etc/registry.yml"]\n'
    )
    docker("build", "--tag", name, str(context))
    yield name
    docker("image", "rm", "--force", name, check=False)


def test_a_local_registry_is_started_when_none_answers_and_reused_after(
    app: App, lab: Any, registry_image: str
) -> None:
    port = lab.free_port()
    container = f"shipyard-registry-test-{uuid.uuid4().hex[:8]}"
    server = f"localhost:{port}"
    app.configure(
        registry={"server": server},
        **{"x-shipyard": {"local_registry": {"image": registry_image, "container": container}}},
    )
    app.repository = f"{server}/{app.service}"
    app.commit()
    try:
        first = app.run("build", "push").ok()
        assert (
            f"starting a registry container {container} ({registry_image}) on 127.0.0.1:{port}"
            in first.stdout
        )
        assert registry_tags(app.service, registry=server) == ["latest", "v-test"]
        published = docker("port", container, "5000/tcp").stdout.split()
        assert published == [f"127.0.0.1:{port}"]

        second = app.run("build", "push", "--version", "again").ok()
        assert "Local registry" not in second.stdout  # it answered: reused

        docker("stop", container)
        third = app.run("build", "push", "--version", "restarted").ok()
        assert f"starting the stopped registry container {container}" in third.stdout
        assert registry_tags(app.service, registry=server) == [
            "again",
            "latest",
            "restarted",
            "v-test",
        ]
    finally:
        docker("rm", "--force", "--volumes", container, check=False)
