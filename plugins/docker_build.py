"""Build the app image with the deployer's Docker engine and push it to the registry.

The built-in answer to ``shipyard_build`` and ``shipyard_push`` (both ``trylast``, so a
plugin returning a result replaces them), plus the local checks that Kamal runs before
the ``pre-build`` hook (``shipyard_pre_build``, ``tryfirst``): the engine answers, and the
registry is ready (a local registry is up, or the credentials work).

**Builder.** docker-py drives the local engine (``docker.from_env()``, so ``DOCKER_HOST``
is honoured) with the classic builder: there is no buildx here. The image gets the label
``service=<service>`` and the tags ``<repository>:<version>`` and
``<repository>:latest[-<destination>]``; ``builder.dockerfile``, ``builder.target`` and
``builder.args`` are passed on.

**Context.** By default a clean ``git clone`` of HEAD in a temporary directory (see
:func:`~shipyard.plugins._build_engine.git_clone`): what is committed is what ships,
submodules included, and ``.dockerignore`` applies exactly as for a working-tree build
because both hand docker-py a directory. ``builder.context: .`` (or any directory)
builds the working tree as it is. As in Kamal, ``builder.dockerfile`` is relative to the
project directory (its copy, in the clone).

**Secrets.** The classic builder cannot give a secret to one step without leaving it in
a layer or in ``docker history`` (build args are recorded there). So when
``builder.secrets`` is set, the build runs with BuildKit through the ``docker build``
CLI (``DOCKER_BUILDKIT=1``, a CLI with buildx or one older than 23.0, whose BuildKit
client is built in): each secret is written to a 0600 file in a private temporary
directory, passed as ``--secret id=NAME,src=FILE`` and removed after the build. The
Dockerfile reads it with ``RUN --mount=type=secret,id=NAME`` (at ``/run/secrets/NAME``);
it exists only while that step runs. dockerd 20.10's built-in Dockerfile frontend
supports this offline: no frontend image is pulled.

**Push.** docker-py pushes both tags, showing a progress bar (one step per layer) and,
with ``-v``, a line whenever a layer changes state. Credentials (``registry.username`` /
``password``: a literal or ``[SECRET_NAME]``) go to the engine as docker-py's
``auth_config``, never on a command line or in a file.

**Local registry.** With ``registry.server: localhost:PORT`` images go to a registry on
this machine (hosts pull through an SSH tunnel). One already answering on the port is
reused; otherwise the container ``shipyard-registry`` is started from
``x-shipyard.local_registry.image`` (default ``registry:2``), published on
``127.0.0.1:PORT`` only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.core import hookimpl
from shipyard.core.errors import ShipyardError
from shipyard.core.records import BuildResult, PushResult
from shipyard.plugins._build_plan import (
    BuildLog,
    ContextChoice,
    LocalRegistrySettings,
    PushTracker,
    auth_config,
    buildkit_command,
    check_secret_names,
    choose_context,
    decide_local_registry,
    dockerfile_path,
    image_tags,
    local_registry_port,
    probe_kind,
    split_reference,
    stringify,
)

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.plugins._build_engine import Engine

#: How long a freshly started local registry may take to answer.
REGISTRY_START_TIMEOUT = 30.0
#: Builder settings the classic builder does not use (a warning names them).
_UNSUPPORTED = ("remote", "cache", "ssh", "provenance", "sbom", "pack")


# --- per-run state ---------------------------------------------------------------------


@dataclass
class _Run:
    engine: Engine | None = None
    registry_ready: bool = False
    logged_in: bool = False


_RUNS: weakref.WeakKeyDictionary[Context, _Run] = weakref.WeakKeyDictionary()


def _run(ctx: Context) -> _Run:
    return _RUNS.setdefault(ctx, _Run())


def engine(ctx: Context) -> Engine:
    """This run's connection to the local engine, made on first use."""
    from shipyard.plugins._build_engine import Engine

    run = _run(ctx)
    if run.engine is None:
        run.engine = Engine.connect()
    return run.engine


@hookimpl
def shipyard_unconfigure(ctx: Context) -> None:
    run = _RUNS.pop(ctx, None)
    if run is not None and run.engine is not None:
        run.engine.close()


# --- what to build -----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    """One image build: where from, how, and the tags it gets."""

    service: str
    tags: tuple[str, ...]
    context: ContextChoice
    dockerfile: str
    args: dict[str, str]
    target: str | None
    secrets: tuple[str, ...]
    no_cache: bool

    @property
    def labels(self) -> dict[str, str]:
        return {"service": self.service}

    @property
    def builder_kind(self) -> str:
        return "BuildKit through the docker CLI (for builder.secrets)" if self.secrets else "the classic builder"


def build_spec(
    ctx: Context, *, tags: tuple[str, ...] | None = None, context: str | None = None, no_cache: bool | None = None
) -> BuildSpec:
    """The build ``ctx`` asks for: the config's builder settings, ``ctx.version``'s tags,
    and ``--no-cache`` from :func:`shipyard.core.build.build_options`."""
    from shipyard.core.build import build_options

    config = ctx.config
    builder = config.schema.builder
    return BuildSpec(
        service=config.service,
        tags=tags if tags is not None else image_tags(config.repository, ctx.version, config.latest_tag),
        context=choose_context(config.project_dir, context if context is not None else builder.context),
        dockerfile=builder.dockerfile,
        args=stringify(builder.args),
        target=builder.target,
        secrets=tuple(check_secret_names(builder.secrets)),
        no_cache=build_options(ctx).no_cache if no_cache is None else no_cache,
    )


# --- local checks, before the pre-build hook ------------------------------------------------


@hookimpl(tryfirst=True)
def shipyard_pre_build(ctx: Context) -> None:
    """Kamal's local checks, before the project's pre-build hooks: the engine answers,
    and the registry is ready to take the image."""
    engine(ctx)
    prepare_registry(ctx)


def prepare_registry(ctx: Context) -> None:
    """A local registry answers (started if need be), or the registry credentials work."""
    run = _run(ctx)
    registry = ctx.config.schema.registry
    if registry.is_local:
        if not run.registry_ready:
            ensure_local_registry(ctx)
            run.registry_ready = True
        return
    auth = registry_auth(ctx)
    if auth is not None and not run.logged_in:
        engine(ctx).login(auth)
        run.logged_in = True
        ctx.output.detail(f"Logged in to {auth['serveraddress']} (this run only; nothing stored)")


def registry_auth(ctx: Context) -> dict[str, str] | None:
    """docker-py's ``auth_config`` for the registry, or None (local registry, or no
    credentials configured). Literal passwords are redacted from all output too."""
    registry = ctx.config.schema.registry
    if registry.is_local:
        return None
    auth = auth_config(registry.server, registry.username, registry.password, lambda name: ctx.secrets[name])
    if auth is not None:
        ctx.output.redact([auth["password"]])
    return auth


def probe_registry(server: str) -> int | None:
    """The HTTP status of ``GET http://SERVER/v2/``, or None if nothing answers. Proxy
    settings in the environment are ignored: this is a loopback address."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{server}/v2/", timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def ensure_local_registry(ctx: Context) -> None:
    server = ctx.config.schema.registry.server or ""
    port = local_registry_port(server)
    settings = LocalRegistrySettings.parse(ctx.config.plugin_settings("local_registry"))
    status = probe_registry(server)
    probe = probe_kind(status)
    container = engine(ctx).registry_container(settings.container) if probe == "closed" else None
    decision = decide_local_registry(port, probe, container, settings, status)
    if decision.action == "fail":
        raise ShipyardError(f"local registry: {decision.reason}")
    if decision.action == "reuse":
        ctx.output.detail(f"Local registry: {decision.reason}")
        return
    ctx.output.info(f"Local registry: {decision.reason}")
    if decision.action == "run":
        engine(ctx).run_registry(settings.container, settings.image, port)
    elif decision.action == "start":
        engine(ctx).start_container(settings.container)
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while probe_kind(probe_registry(server)) != "registry":
        if time.monotonic() > deadline:
            raise ShipyardError(
                f"local registry: the container {settings.container} did not answer on {server} within "
                f"{REGISTRY_START_TIMEOUT:.0f}s (see `docker logs {settings.container}`)"
            )
        time.sleep(0.2)


# --- build -------------------------------------------------------------------------------


@hookimpl(trylast=True)
def shipyard_build(ctx: Context) -> BuildResult:
    return build_image(ctx, build_spec(ctx))


def build_image(ctx: Context, spec: BuildSpec) -> BuildResult:
    """Build ``spec`` with the local engine and give the image all of ``spec.tags``."""
    secrets = {name: ctx.secrets[name] for name in spec.secrets}  # a missing one fails here, first
    _check_builder_settings(ctx)
    with _build_directory(ctx, spec) as (context_dir, build_dir):
        shown = spec.dockerfile if spec.context.mode == "path" else f"{spec.dockerfile} (in the clone of HEAD)"
        dockerfile = dockerfile_path(build_dir, spec.dockerfile, shown_as=shown)
        ctx.output.info(f"Building {spec.tags[0]} from {_describe(spec, context_dir)} with {spec.builder_kind}")
        if spec.secrets:
            image_id = _build_with_buildkit(ctx, spec, context_dir, dockerfile, secrets)
        else:
            image_id = _build_classic(ctx, spec, context_dir, dockerfile)
    ctx.output.info(f"Built {', '.join(spec.tags)} ({image_id.removeprefix('sha256:')[:12]})")
    return BuildResult(image_id=image_id, tags=spec.tags)


def _describe(spec: BuildSpec, context_dir: Path) -> str:
    if spec.context.mode == "git":
        return "a clean git clone of HEAD"
    return f"the working tree ({context_dir})"


@contextlib.contextmanager
def _build_directory(ctx: Context, spec: BuildSpec) -> Iterator[tuple[Path, Path]]:
    """(context directory, directory the Dockerfile path is relative to)."""
    from shipyard.plugins._build_engine import git_clone, uncommitted_changes

    project_dir = ctx.config.project_dir
    changes = uncommitted_changes(project_dir)
    shown = "\n".join(f"  {line}" for line in changes[:10]) + (f"\n  ... and {len(changes) - 10} more" if len(changes) > 10 else "")
    if spec.context.mode == "path":
        if changes:
            ctx.output.warn(f"Building with uncommitted changes:\n{shown}")
        assert spec.context.path is not None
        yield spec.context.path, project_dir
        return
    if changes:
        ctx.output.warn(f"Building from a clean git clone of HEAD, so ignoring these uncommitted changes:\n{shown}")
    with git_clone(project_dir, spec.service) as checkout:
        ctx.output.detail(f"Cloned {checkout.sha[:12]} into {checkout.root}")
        yield checkout.build_dir, checkout.build_dir


def _check_builder_settings(ctx: Context) -> None:
    builder = ctx.config.schema.builder
    ignored = [key for key in _UNSUPPORTED if getattr(builder, key) is not None]
    if not builder.local:
        ignored.append("local")
    if ignored:
        ctx.output.warn(
            "builder." + ", builder.".join(ignored) + ": not supported by the classic builder; ignored"
        )
    if builder.arch:
        wanted = [builder.arch] if isinstance(builder.arch, str) else list(builder.arch)
        native = engine(ctx).version().get("Arch", "")
        if native and native not in wanted:
            raise ShipyardError(
                f"builder.arch is {', '.join(wanted)}, but this engine builds {native} images only "
                "(the classic builder builds for the engine's own architecture)"
            )
        others = [arch for arch in wanted if arch != native]
        if others:
            ctx.output.warn(f"builder.arch: building {native} only; the classic builder cannot build {', '.join(others)}")


def _build_classic(ctx: Context, spec: BuildSpec, context_dir: Path, dockerfile: Path) -> str:
    log = BuildLog()
    with ctx.output.progress(f"Building {spec.tags[0]}") as bar:
        events = engine(ctx).build(
            context=context_dir, dockerfile=dockerfile, tag=spec.tags[0], args=spec.args,
            labels=spec.labels, target=spec.target, no_cache=spec.no_cache,
        )
        for event in events:
            for line in log.feed_event(event):
                ctx.output.detail(line)
            if log.new_step:
                bar.advance()
        for line in log.finish():
            ctx.output.detail(line)
    if log.error is not None or log.image_id is None:
        raise ShipyardError(log.failure_message(f"Build of {spec.tags[0]}"))
    for reference in spec.tags[1:]:
        engine(ctx).tag(log.image_id, *split_reference(reference))
    return log.image_id


def _build_with_buildkit(
    ctx: Context, spec: BuildSpec, context_dir: Path, dockerfile: Path, secrets: dict[str, str]
) -> str:
    from shipyard.plugins._build_engine import CommandExit, find_buildkit_cli, run_streaming

    settings = ctx.config.plugin_settings("docker_build")
    configured = settings.get("buildkit_cli") if isinstance(settings, dict) else None
    cli = find_buildkit_cli(str(configured) if configured else None)
    ctx.output.detail(f"BuildKit through {cli} (builder.secrets: {', '.join(spec.secrets)})")
    log = BuildLog()
    with tempfile.TemporaryDirectory(prefix="shipyard-build-secrets-") as private:  # mode 0700
        directory = Path(private)
        files = {name: _write_private(directory / f"secret-{index}", value)
                 for index, (name, value) in enumerate(secrets.items())}
        iidfile = directory / "image-id"
        command = buildkit_command(
            cli, context=context_dir, dockerfile=dockerfile, tags=spec.tags, labels=spec.labels,
            args=spec.args, target=spec.target, no_cache=spec.no_cache, secret_files=files, iidfile=iidfile,
        )
        failed = False
        with ctx.output.progress(f"Building {spec.tags[0]}") as bar:
            try:
                for line in run_streaming(list(command.argv), env=command.env, cwd=context_dir):
                    for shown in log.feed_line(line):
                        ctx.output.detail(shown)
                    if log.new_step:
                        bar.advance()
            except CommandExit:
                failed = True
        image_id = iidfile.read_text().strip() if iidfile.is_file() else log.image_id
    if failed or not image_id:
        raise ShipyardError(log.failure_message(f"Build of {spec.tags[0]}"))
    return image_id


def _write_private(path: Path, value: str) -> Path:
    """Write ``value`` to a new file only its owner can read."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    return path


# --- push --------------------------------------------------------------------------------


@hookimpl(trylast=True)
def shipyard_push(ctx: Context, build: BuildResult) -> PushResult:
    prepare_registry(ctx)
    auth = registry_auth(ctx)
    layers = engine(ctx).image_layers(build.image_id)
    for reference in build.tags:
        push_reference(ctx, reference, auth, layers)
    return PushResult(references=tuple(build.tags))


def push_reference(ctx: Context, reference: str, auth: dict[str, str] | None, layers: int) -> None:
    repository, tag = split_reference(reference)
    tracker = PushTracker()
    with ctx.output.progress(f"Pushing {reference}", total=layers or None) as bar:
        for event in engine(ctx).push(repository, tag, auth):
            update = tracker.feed(event)
            if update.advance:
                bar.advance(update.advance)
            if update.detail:
                ctx.output.detail(update.detail)
            if update.error:
                break
    if tracker.error is not None:
        hint = ""
        if any(word in tracker.error.lower() for word in ("unauthorized", "denied", "authentication")):
            hint = " (check registry.username and registry.password)"
        raise ShipyardError(f"Pushing {reference} failed: {tracker.error}{hint}")
    ctx.output.info(f"Pushed {reference}" + (f" ({tracker.digest})" if tracker.digest else ""))


# --- the other `build` commands ------------------------------------------------------------


def build_dev(ctx: Context, *, no_cache: bool = False) -> BuildResult:
    """``build dev``: the working tree (``builder.context``, default ``.``) into the local
    image store as ``<repository>:dirty``, not pushed."""
    config = ctx.config
    spec = build_spec(
        ctx, tags=(f"{config.repository}:dirty",), context=config.schema.builder.context or ".", no_cache=no_cache
    )
    engine(ctx)
    result = build_image(ctx, spec)
    ctx.output.info(f"{spec.tags[0]} is in the local image store (not pushed)")
    return result


def build_details(ctx: Context) -> dict[str, Any]:
    """What ``build push`` would do, and with which engine."""
    config = ctx.config
    builder = config.schema.builder
    version = engine(ctx).version()
    try:
        tags: list[str] = list(image_tags(config.repository, ctx.version, config.latest_tag))
    except ShipyardError:
        tags = [f"{config.repository}:<version>", f"{config.repository}:{config.latest_tag}"]
    context = choose_context(config.project_dir, builder.context)
    registry = config.schema.registry
    details: dict[str, Any] = {
        "engine": {"address": _engine_address(), "version": version["Version"], "api_version": version["ApiVersion"],
                   "platform": f"{version['Os']}/{version['Arch']}"},
        "builder": "classic",
        "secrets_builder": "BuildKit via the docker build CLI" if builder.secrets else None,
        "context": context.describe(),
        "dockerfile": builder.dockerfile,
        "repository": config.repository,
        "tags": tags,
        "registry": registry.server or "docker.io",
        "local_registry": registry.is_local,
    }
    return details


def _engine_address() -> str:
    from shipyard.plugins._build_engine import engine_address

    return engine_address()


def details_text(details: dict[str, Any]) -> str:
    engine_info = details["engine"]
    builder = details["builder"]
    if details.get("secrets_builder"):
        builder += f" (builder.secrets: {details['secrets_builder']})"
    registry = details["registry"] + (" (local registry on this machine)" if details["local_registry"] else "")
    rows = [
        ("Engine", f"Docker {engine_info['version']} (API {engine_info['api_version']}, {engine_info['platform']}) "
                   f"at {engine_info['address']}"),
        ("Builder", builder),
        ("Context", details["context"]),
        ("Dockerfile", details["dockerfile"]),
        ("Repository", details["repository"]),
        ("Tags", ", ".join(details["tags"])),
        ("Registry", registry),
    ]
    return "\n".join(f"{name + ':':<12}{value}" for name, value in rows)
