"""The deployer's own Docker engine, behind a small typed wrapper.

docker-py has no type hints, so every call into it happens here and nowhere else, and
what comes back is turned into plain typed values. docker-py is imported when an
:class:`Engine` is made, never when this module is imported (start-up time).

Also here: the ``docker build`` CLI run with BuildKit (for build secrets), and the clean
git clone of HEAD that is the default build context.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.core.errors import ShipyardError
from shipyard.plugins._build_plan import RegistryContainer, cli_has_builtin_buildkit

#: Seconds docker-py waits for the engine to say anything (a push that makes no progress
#: for this long fails). Builds have no such limit: a step may be silent for a long time.
ENGINE_TIMEOUT = 300


def _explain(error: BaseException) -> str:
    """docker-py's APIError carries the engine's own words in ``explanation``."""
    explanation = getattr(error, "explanation", None)
    text = explanation if isinstance(explanation, str | bytes) and explanation else str(error)
    return (text.decode(errors="replace") if isinstance(text, bytes) else text).strip()


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """docker-py's errors as a ShipyardError saying what failed."""
    import docker  # type: ignore[import-untyped]  # docker-py ships no type hints

    try:
        yield
    except docker.errors.DockerException as error:
        raise ShipyardError(f"{what}: {_explain(error)}") from error


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class Engine:
    """The local Docker engine (``docker.from_env()``: honours ``DOCKER_HOST``,
    ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH``)."""

    def __init__(self, client: Any) -> None:
        self._client = client  # docker.DockerClient
        self._api = client.api  # docker.APIClient: the low-level calls, streamed

    @classmethod
    def connect(cls) -> Engine:
        import docker

        try:
            client = docker.from_env(timeout=ENGINE_TIMEOUT)
            client.api.ping()
        except docker.errors.DockerException as error:
            raise ShipyardError(
                f"cannot reach the Docker engine on this machine ({engine_address()}): {_explain(error)}"
            ) from error
        return cls(client)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    # -- facts ---------------------------------------------------------------------------

    def version(self) -> dict[str, str]:
        with _engine_errors("cannot ask the Docker engine its version"):
            info: dict[str, Any] = self._api.version()
        return {key: str(info.get(key, "")) for key in ("Version", "ApiVersion", "Os", "Arch")}

    def image_layers(self, reference: str) -> int:
        """How many layers the image has (the push progress's total)."""
        with _engine_errors(f"cannot inspect the image {reference}"):
            info: dict[str, Any] = self._api.inspect_image(reference)
        layers = (info.get("RootFS") or {}).get("Layers") or []
        return len(layers)

    # -- build, tag, push ------------------------------------------------------------------

    def build(
        self,
        *,
        context: Path,
        dockerfile: Path,
        tag: str,
        args: dict[str, str],
        labels: dict[str, str],
        target: str | None,
        no_cache: bool,
    ) -> Iterator[dict[str, Any]]:
        """Build with the classic builder; yields the engine's decoded JSON events. An
        error the engine answers with before streaming becomes an ``error`` event, so
        every failure is read the same way."""
        import docker

        try:
            stream = self._api.build(
                path=str(context),
                dockerfile=str(dockerfile),  # docker-py adds it to the tar if outside the context
                tag=tag,
                buildargs=dict(args),
                labels=dict(labels),
                target=target,
                nocache=no_cache,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                timeout=None,  # a silent step is not a dead engine
            )
            for event in stream:
                if isinstance(event, dict):
                    yield event
        except docker.errors.DockerException as error:
            yield {"error": _explain(error)}
        except OSError as error:  # .dockerignore'd context files that vanish, sockets
            yield {"error": f"{type(error).__name__}: {error}"}

    def tag(self, image: str, repository: str, tag: str) -> None:
        with _engine_errors(f"cannot tag {image} as {repository}:{tag}"):
            self._api.tag(image, repository, tag, force=True)

    def push(self, repository: str, tag: str, auth_config: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        """Push ``repository:tag``; yields the engine's decoded JSON events (errors too)."""
        import docker

        try:
            stream = self._api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth_config)
            for event in stream:
                if isinstance(event, dict):
                    yield event
        except docker.errors.DockerException as error:
            yield {"error": _explain(error)}

    def login(self, auth_config: dict[str, str]) -> None:
        """Check the credentials with the registry (through the engine) and keep them in
        this client's memory for builds and pushes; nothing is written to
        ``~/.docker/config.json`` and nothing appears on a command line."""
        import docker

        try:
            self._api.login(
                auth_config["username"], password=auth_config["password"],
                registry=auth_config["serveraddress"], reauth=True,
            )
        except docker.errors.DockerException as error:
            raise ShipyardError(f"registry login to {auth_config['serveraddress']} failed: {_explain(error)}") from error

    # -- the local registry container ------------------------------------------------------

    def registry_container(self, name: str) -> RegistryContainer | None:
        import docker

        try:
            info: dict[str, Any] = self._api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as error:
            raise ShipyardError(f"cannot inspect the container {name}: {_explain(error)}") from error
        running = bool((info.get("State") or {}).get("Running"))
        bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).get("5000/tcp") or []
        ports = [int(b["HostPort"]) for b in bindings if isinstance(b, dict) and str(b.get("HostPort", "")).isdigit()]
        return RegistryContainer(running=running, host_port=ports[0] if ports else None)

    def start_container(self, name: str) -> None:
        import docker

        try:
            self._api.start(name)
        except docker.errors.DockerException as error:
            raise ShipyardError(f"cannot start the registry container {name}: {_explain(error)}") from error

    def run_registry(self, name: str, image: str, port: int) -> None:
        """``docker run -d --name NAME --restart unless-stopped -p 127.0.0.1:PORT:5000 IMAGE``,
        pulling the image first if the engine does not have it."""
        import docker

        try:
            try:
                self._api.inspect_image(image)
            except docker.errors.ImageNotFound:
                repository, _, tag = image.partition(":")
                self._api.pull(repository, tag=tag or "latest")
        except docker.errors.DockerException as error:
            raise ShipyardError(
                f"the local registry image {image} is not on this machine and cannot be pulled: {_explain(error)} "
                "(set x-shipyard.local_registry.image to an image the engine has)"
            ) from error
        try:
            host_config = self._api.create_host_config(
                port_bindings={5000: ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"}
            )
            created = self._api.create_container(
                image, name=name, ports=[5000], host_config=host_config,
                labels={"shipyard.role": "local-registry"},
            )
            self._api.start(created["Id"])
        except docker.errors.DockerException as error:
            raise ShipyardError(f"cannot start the local registry container {name}: {_explain(error)}") from error


# --- BuildKit through the docker CLI -----------------------------------------------------


def _docker_clis() -> list[str]:
    """Every ``docker`` executable on PATH, then Debian's, once each."""
    found: list[str] = []
    seen: set[str] = set()
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = os.path.join(directory or ".", "docker")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            if real not in seen:
                seen.add(real)
                found.append(candidate)
    return found


def _quiet(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def find_buildkit_cli(configured: str | None = None) -> str:
    """A ``docker`` CLI that can build with BuildKit: one with the buildx plugin, or one
    older than 23.0 (its BuildKit client is built in; newer CLIs refuse
    ``DOCKER_BUILDKIT=1`` without buildx). ``configured`` (x-shipyard.docker_build.buildkit_cli)
    is the only candidate when given."""
    candidates = [configured] if configured else _docker_clis()
    tried = []
    for cli in candidates:
        resolved = shutil.which(cli) if os.sep not in cli else cli
        if resolved is None:
            tried.append(f"{cli} (not found)")
            continue
        buildx = _quiet([resolved, "buildx", "version"])
        if buildx is not None and buildx.returncode == 0:
            return resolved
        version = _quiet([resolved, "--version"])
        text = version.stdout.strip() if version is not None else ""
        if cli_has_builtin_buildkit(text):
            return resolved
        tried.append(f"{resolved} ({text or 'no version'}, no buildx)")
    raise ShipyardError(
        "builder.secrets needs BuildKit, and no docker CLI here can drive it: install the buildx plugin, "
        "or point x-shipyard.docker_build.buildkit_cli at a docker CLI older than 23.0"
        + (f" (tried: {'; '.join(tried)})" if tried else " (no docker CLI on PATH)")
    )


def run_streaming(argv: list[str], *, env: dict[str, str], cwd: Path) -> Iterator[str]:
    """Run ``argv`` and yield its output (stdout and stderr) line by line; the exit
    status is raised as :class:`CommandExit` at the end when non-zero."""
    try:
        process = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )
    except OSError as error:
        raise ShipyardError(f"cannot run {argv[0]}: {error}") from error
    assert process.stdout is not None
    with process:
        yield from process.stdout
    if process.returncode != 0:
        raise CommandExit(process.returncode)


class CommandExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"exit status {status}")
        self.status = status


# --- the default context: a clean git clone of HEAD ----------------------------------------


@dataclass(frozen=True)
class Checkout:
    """A clean clone of HEAD: ``build_dir`` is the project directory's place in it."""

    root: Path
    build_dir: Path
    sha: str


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise ShipyardError(f"cannot run git: {error}") from error


def _git_checked(cwd: Path, *args: str, what: str) -> str:
    completed = _git(cwd, *args)
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ShipyardError(f"{what} failed: {tail}")
    return completed.stdout.strip()


def uncommitted_changes(project_dir: Path) -> list[str]:
    """``git status --porcelain`` of the project, one entry per changed or new file."""
    completed = _git(project_dir, "status", "--porcelain", "--untracked-files=normal", "--", ".")
    return [line for line in completed.stdout.splitlines() if line.strip()] if completed.returncode == 0 else []


@contextlib.contextmanager
def git_clone(project_dir: Path, service: str) -> Iterator[Checkout]:
    """A clean clone of the project's HEAD commit in a temporary directory, with its
    submodules, removed afterwards.

    ``git clone --shared`` borrows the repository's object store instead of copying it,
    so the clone is quick whatever the history's size, and it can check out HEAD even
    when HEAD is on no branch. Submodules are cloned from their configured URLs (relative
    URLs resolve against the project's repository, as for the original clone).
    """
    top = _git(project_dir, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise ShipyardError(
            f"{project_dir} is not in a git repository: the default build context is a clean git clone of "
            "HEAD (commit your app, or set builder.context: . to build the working tree)"
        )
    root = Path(top.stdout.strip()).resolve()
    sha = _git(project_dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").stdout.strip()
    if not sha:
        raise ShipyardError(
            "the repository has no commit yet: the default build context is a clean git clone of HEAD "
            "(commit your app, or set builder.context: . to build the working tree)"
        )
    relative = project_dir.resolve().relative_to(root)
    with tempfile.TemporaryDirectory(prefix=f"shipyard-clone-{service}-") as scratch:
        clone = Path(scratch) / (root.name or "repo")
        _git_checked(Path(scratch), "clone", "--quiet", "--no-checkout", "--shared", str(root), str(clone),
                     what="git clone of the project")
        _git_checked(clone, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha,
                     what=f"git checkout of {sha[:12]} in the clone")
        if (clone / ".gitmodules").is_file():
            _git_checked(clone, "-c", "protocol.file.allow=always", "submodule", "update", "--init",
                         "--recursive", "--quiet", what="git submodule update in the clone")
        yield Checkout(root=clone, build_dir=clone / relative, sha=sha)
