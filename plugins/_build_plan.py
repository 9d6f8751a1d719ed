"""The decisions of the ``docker_build`` plugin, as pure functions and small records.

Nothing here talks to Docker, git or the network, so the unit tests cover all of it:
tags, the build context, registry credentials, the local-registry decision, the plan
for build secrets, and reading the builders' output (progress, the failing step).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shipyard.core.errors import ShipyardError

# --- tags ------------------------------------------------------------------------------

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_tag(tag: str, *, what: str = "version") -> str:
    """``tag`` if Docker accepts it as an image tag, else a ShipyardError."""
    if not _TAG.match(tag):
        raise ShipyardError(
            f"{what} {tag!r} cannot be an image tag: use up to 128 letters, digits, `_`, `.` "
            "and `-`, not starting with `.` or `-`"
        )
    return tag


def image_tags(repository: str, version: str, latest_tag: str) -> tuple[str, str]:
    """``<repository>:<version>`` and ``<repository>:latest[-<dest>]``."""
    return f"{repository}:{check_tag(version)}", f"{repository}:{check_tag(latest_tag, what='tag')}"


def split_reference(reference: str) -> tuple[str, str]:
    """``localhost:5555/app:v1`` → (``localhost:5555/app``, ``v1``); a registry port is
    not a tag."""
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, "latest"
    return repository, tag


def stringify(values: Mapping[str, Any]) -> dict[str, str]:
    """Build args as strings, with YAML booleans as ``true``/``false``."""
    return {k: ("true" if v is True else "false" if v is False else "" if v is None else str(v)) for k, v in values.items()}


# --- the build context -----------------------------------------------------------------


@dataclass(frozen=True)
class ContextChoice:
    """Where the build's files come from.

    ``git``: a clean clone of HEAD (Kamal's default): what is committed is what is built,
    so a dirty working tree can never leak into a release. ``path``: a directory of the
    working tree as it is (``builder.context: .``), ``.dockerignore`` respected.
    """

    mode: Literal["git", "path"]
    path: Path | None = None  # the directory, for mode "path"

    def describe(self) -> str:
        if self.mode == "git":
            return "git clone of HEAD"
        return f"working tree ({self.path})"


def choose_context(project_dir: Path, configured: str | None) -> ContextChoice:
    """``builder.context`` unset → a git clone of HEAD; set → that directory, relative to
    the project directory."""
    if configured is None:
        return ContextChoice("git")
    path = (project_dir / configured).resolve()
    if not path.is_dir():
        raise ShipyardError(f"builder.context {configured!r}: {path} is not a directory")
    return ContextChoice("path", path)


def dockerfile_path(build_dir: Path, dockerfile: str, *, shown_as: str | None = None) -> Path:
    """The Dockerfile, relative to the directory the build runs from (the project
    directory, or its copy in the clone), as ``docker build --file`` and Kamal resolve it."""
    path = (build_dir / dockerfile).resolve()
    if not path.is_file():
        raise ShipyardError(f"Missing {shown_as or dockerfile} (builder.dockerfile; looked for {path})")
    return path


# --- registry credentials --------------------------------------------------------------

DOCKER_HUB_AUTH = "https://index.docker.io/v1/"
Credential = str | list[str] | None


def resolve_credential(value: Credential, lookup: Callable[[str], str]) -> str | None:
    """A literal, or ``[SECRET_NAME]`` looked up among the secrets."""
    if value is None:
        return None
    if isinstance(value, list):
        return lookup(value[0])
    return str(value)


def auth_config(
    server: str | None, username: Credential, password: Credential, lookup: Callable[[str], str]
) -> dict[str, str] | None:
    """The credentials docker-py sends in the ``X-Registry-Auth`` header, or None when the
    config names none (the engine's own login, if any, is used then)."""
    if username is None and password is None:
        return None
    if username is None or password is None:
        missing = "username" if username is None else "password"
        raise ShipyardError(f"registry.{missing} is not set in config/deploy.yml (both are needed to log in)")
    return {
        "username": resolve_credential(username, lookup) or "",
        "password": resolve_credential(password, lookup) or "",
        "serveraddress": server or DOCKER_HUB_AUTH,
    }


# --- the local registry ----------------------------------------------------------------

DEFAULT_REGISTRY_IMAGE = "registry:2"
DEFAULT_REGISTRY_CONTAINER = "shipyard-registry"


@dataclass(frozen=True)
class LocalRegistrySettings:
    """``x-shipyard: {local_registry: {image: ..., container: ...}}``."""

    image: str = DEFAULT_REGISTRY_IMAGE
    container: str = DEFAULT_REGISTRY_CONTAINER

    @classmethod
    def parse(cls, block: Any) -> LocalRegistrySettings:
        if block is None:
            return cls()
        if not isinstance(block, dict):
            raise ShipyardError("x-shipyard.local_registry: expected a map with `image` and/or `container`")
        unknown = sorted(set(block) - {"image", "container"})
        problems = [f"x-shipyard.local_registry.{key}: unknown setting (known: image, container)" for key in unknown]
        for key in ("image", "container"):
            if key in block and (not isinstance(block[key], str) or not block[key].strip()):
                problems.append(f"x-shipyard.local_registry.{key}: expected a non-empty string")
        if problems:
            raise ShipyardError("\n".join(problems))
        return cls(image=block.get("image", DEFAULT_REGISTRY_IMAGE),
                   container=block.get("container", DEFAULT_REGISTRY_CONTAINER))


def local_registry_port(server: str) -> int:
    """``localhost:5555`` → 5555."""
    return int(server.rsplit(":", 1)[1])


Probe = Literal["registry", "other", "closed"]


def probe_kind(status: int | None) -> Probe:
    """What ``GET http://localhost:PORT/v2/`` said: a registry answers 200 (open) or 401
    (with auth); None means nothing listens."""
    if status is None:
        return "closed"
    return "registry" if status in (200, 401) else "other"


@dataclass(frozen=True)
class RegistryContainer:
    """The registry container as the engine knows it."""

    running: bool
    host_port: int | None  # the loopback port it publishes 5000 on, if any


@dataclass(frozen=True)
class RegistryDecision:
    action: Literal["reuse", "wait", "start", "run", "fail"]
    reason: str


def decide_local_registry(
    port: int, probe: Probe, container: RegistryContainer | None, settings: LocalRegistrySettings, status: int | None = None
) -> RegistryDecision:
    """Reuse a registry that already answers on ``port``; else start ours (the stopped
    container, or a new one from ``settings.image``); refuse to touch anything else."""
    name = settings.container
    if probe == "registry":
        return RegistryDecision("reuse", f"a registry already answers on localhost:{port}")
    if probe == "other":
        return RegistryDecision(
            "fail",
            f"localhost:{port} answers, but not as a registry (GET /v2/ returned {status}): "
            "choose another port for registry.server",
        )
    if container is None:
        return RegistryDecision("run", f"starting a registry container {name} ({settings.image}) on 127.0.0.1:{port}")
    if container.host_port is not None and container.host_port != port:
        return RegistryDecision(
            "fail",
            f"the container {name} publishes port {container.host_port}, not {port}: "
            f"remove it (docker rm -f {name}) or set registry.server to localhost:{container.host_port}",
        )
    if container.running:
        return RegistryDecision("wait", f"the container {name} is running; waiting for it to answer on {port}")
    return RegistryDecision("start", f"starting the stopped registry container {name}")


# --- build secrets ---------------------------------------------------------------------

_SECRET_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class BuildKitCommand:
    """A ``docker build`` run with BuildKit: needed for ``builder.secrets``, because the
    classic builder cannot mount a secret into one ``RUN`` step. Each secret's value is
    in a 0600 file that BuildKit mounts at ``/run/secrets/<NAME>`` for the steps that ask
    (``RUN --mount=type=secret,id=NAME``) and never writes into a layer. The command line
    carries only the files' paths."""

    argv: tuple[str, ...]
    env: dict[str, str]


def check_secret_names(names: Iterable[str]) -> list[str]:
    names = list(names)
    bad = [n for n in names if not _SECRET_ID.match(n)]
    if bad:
        raise ShipyardError(
            "builder.secrets: " + ", ".join(repr(n) for n in bad) + " cannot be a BuildKit secret id "
            "(letters, digits, `_`, `.`, `-`)"
        )
    return names


def buildkit_command(
    cli: str,
    *,
    context: Path,
    dockerfile: Path,
    tags: Iterable[str],
    labels: Mapping[str, str],
    args: Mapping[str, str],
    target: str | None,
    no_cache: bool,
    secret_files: Mapping[str, Path],
    iidfile: Path,
) -> BuildKitCommand:
    argv = [cli, "build", "--progress=plain", "--iidfile", str(iidfile)]
    for tag in tags:
        argv += ["--tag", tag]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for name, path in secret_files.items():
        argv += ["--secret", f"id={name},src={path}"]
    argv += ["--file", str(dockerfile)]
    if target:
        argv += ["--target", target]
    if no_cache:
        argv.append("--no-cache")
    argv.append(str(context))
    return BuildKitCommand(tuple(argv), {"DOCKER_BUILDKIT": "1"})


def cli_has_builtin_buildkit(version_text: str) -> bool:
    """``Docker version 20.10.24+dfsg1, build 297e128`` → True: CLIs before 23.0 carry a
    BuildKit client; later ones need the buildx plugin for it."""
    match = re.search(r"version (\d+)\.(\d+)", version_text)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) < (23, 0)


# --- reading the builders' output ------------------------------------------------------

TAIL_LINES = 12
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal colour codes (the classic builder paints a step's
    stderr red)."""
    return _ANSI.sub("", text)


@dataclass
class _Step:
    title: str
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))


class BuildLog:
    """Follows a build's output, step by step, so a failure can show the failing step,
    the last lines it printed, and the error.

    Fed either with the classic builder's decoded JSON stream (:meth:`feed_event`) or
    with BuildKit's ``--progress=plain`` lines (:meth:`feed_line`). Both return the
    lines worth showing (for ``-v``) and say through :attr:`new_step` when a step began.
    """

    _BK_HEADER = re.compile(r"^#(\d+) (\[.+)$")
    _BK_OUTPUT = re.compile(r"^#(\d+) \d+\.\d+ (.*)$")
    _BK_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
    _BK_NOISE = re.compile(r"^#\d+ (sha256:[0-9a-f]+|DONE \S+|CACHED|\.\.\.)$")

    def __init__(self) -> None:
        self.steps: list[_Step] = []
        self._by_id: dict[str, _Step] = {}
        self.before_steps: deque[str] = deque(maxlen=50)
        self.error: str | None = None
        self.failed_step: _Step | None = None
        self.image_id: str | None = None
        self.new_step = False
        self.last_line: str | None = None  # BuildKit's last line outside any step
        self._partial = ""
        self._in_summary = False

    @property
    def current(self) -> _Step | None:
        return self.steps[-1] if self.steps else None

    # classic builder: {"stream": ...}, {"aux": {"ID": ...}}, {"error": ..., "errorDetail": ...}
    def feed_event(self, event: Mapping[str, Any]) -> list[str]:
        self.new_step = False
        if "error" in event or "errorDetail" in event:
            shown = self.finish()
            detail = event.get("errorDetail") or {}
            message = (detail.get("message") if isinstance(detail, dict) else None) or event.get("error") or "unknown error"
            self.error = plain(str(message)).strip()
            self.failed_step = self.current
            return [*shown, self.error]
        aux = event.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
            return []
        text = event.get("stream")
        if not isinstance(text, str):
            return []
        # A line may come in pieces (a step's title arrives without its newline).
        pieces = (self._partial + plain(text)).split("\n")
        self._partial = pieces.pop()
        return [line for line in (self._classic_line(piece) for piece in pieces) if line is not None]

    def finish(self) -> list[str]:
        """The classic stream ended: the last line may have had no newline."""
        rest, self._partial = self._partial, ""
        line = self._classic_line(rest)
        return [line] if line is not None else []

    def _classic_line(self, line: str) -> str | None:
        line = line.rstrip()
        if not line:
            return None
        match = re.match(r"^Step (\d+)/(\d+) : (.*)$", line)
        if match:
            self.steps.append(_Step(line))
            self.new_step = True
        elif line.startswith((" ---> ", "Removing intermediate container")):
            pass  # bookkeeping, not the step's output
        elif self.current is not None:
            self.current.lines.append(line)
        else:
            self.before_steps.append(line)
        return line

    # BuildKit: "#5 [2/3] RUN make", "#5 0.412 output", "#5 ERROR: ...", "error: failed to solve: ..."
    def feed_line(self, line: str) -> list[str]:
        self.new_step = False
        line = plain(line).rstrip()
        if not line.strip() or self._BK_NOISE.match(line):
            return []
        if line == "------":  # BuildKit repeats the failed step's output between two of these
            self._in_summary = not self._in_summary
            return [line]
        if self._in_summary:
            return [line]
        header = self._BK_HEADER.match(line)
        if header:
            step_id, title = header.groups()
            if step_id not in self._by_id:
                step = _Step(title)
                self._by_id[step_id] = step
                self.steps.append(step)
                self.new_step = not title.startswith("[internal]")
            return [line]
        error = self._BK_ERROR.match(line)
        if error:
            self.failed_step = self._by_id.get(error.group(1), self.current)
            self.error = error.group(2).strip()
            return [line]
        output = self._BK_OUTPUT.match(line)
        if output:
            owner = self._by_id.get(output.group(1))
            if owner is not None:
                owner.lines.append(output.group(2))
            return [line]
        if line.startswith("#"):  # a step's status: "#6 writing image sha256:... done"
            found = re.search(r"writing image (sha256:[0-9a-f]+)", line)
            if found:
                self.image_id = found.group(1)
            return [line]
        self.last_line = line.strip()
        if line.startswith(("error:", "ERROR:")):
            self.error = self.error or line.split(":", 1)[1].strip()
        else:
            self.before_steps.append(line)
        return [line]

    def failure_message(self, what: str, *, tail: int = TAIL_LINES) -> str:
        """``Build of X failed at <step>:`` then the step's last lines and the error, each
        on its own line, indented."""
        step = self.failed_step
        if step is None and self.steps and self.error:
            step = self.current
        error = self.error or self.last_line or "the build failed"
        if step is None:
            lines = [f"{what} failed:"]
            output = [line for line in self.before_steps if line.strip() != error][-tail:]
        else:
            lines = [f"{what} failed at {step.title}"]
            output = [line for line in step.lines if line.strip() != error][-tail:]
        lines += [f"  {line}" for line in output]
        lines.append(f"  {error}")
        return "\n".join(lines)


# --- push progress ---------------------------------------------------------------------

_LAYER_DONE = ("Pushed", "Layer already exists", "Mounted from")


@dataclass
class PushUpdate:
    advance: int = 0
    detail: str | None = None
    error: str | None = None


class PushTracker:
    """Follows ``docker push``'s JSON stream: one progress step per layer done, a detail
    line whenever a layer changes state, the digest, and the error if any."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.done: set[str] = set()
        self.digest: str | None = None
        self.error: str | None = None

    def feed(self, event: Mapping[str, Any]) -> PushUpdate:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = (detail.get("message") if isinstance(detail, dict) else None) or event.get("error")
            self.error = str(message or "unknown error").strip()
            return PushUpdate(error=self.error)
        aux = event.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
            self.digest = aux["Digest"]
            return PushUpdate()
        status = str(event.get("status") or "")
        layer = event.get("id")
        if not layer or not status:
            found = re.search(r"digest: (sha256:[0-9a-f]+)", status)
            if found:
                self.digest = found.group(1)
            return PushUpdate(detail=status or None)
        layer = str(layer)
        if self.status.get(layer) == status:
            return PushUpdate()  # byte counts of the same state: not a new line
        self.status[layer] = status
        update = PushUpdate(detail=f"{layer}: {status}")
        if status.startswith(_LAYER_DONE) and layer not in self.done:
            self.done.add(layer)
            update.advance = 1
        return update
