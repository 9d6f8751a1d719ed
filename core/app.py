"""``shipyard app ...``: the app's containers on the hosts, outside a full deploy."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from shipyard.core import remote_docker
from shipyard.core.containers import AppContainers, Container, app_filter, list_app_containers
from shipyard.core.errors import ExitStatus, HostError
from shipyard.core.lifecycle import roles_on
from shipyard.core.lock import deploy_lock
from shipyard.core.parallel import on_hosts, report

if TYPE_CHECKING:
    from shipyard.core.config.model import Role
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Names}}"


def _each_host(ctx: Context, work: Callable[[Transport], str]) -> None:
    report(ctx, on_hosts(ctx, ctx.hosts, work), lambda text: text)


def _current(ctx: Context, containers: AppContainers, role: Role) -> Container | None:
    return containers.current(ctx.config, role.name)


def boot(ctx: Context) -> None:
    from shipyard.core import lifecycle

    with deploy_lock(ctx):
        lifecycle.boot_app(ctx)


_START = 'docker start "$1" >/dev/null && docker inspect --format "{{.Id}}" "$1"'


def start(ctx: Context) -> None:
    """Start the version's existing containers and route traffic to them again, in the
    boot groups of ``boot.limit`` with ``boot.wait`` after each, as ``app boot`` does."""
    import time

    from shipyard.plugins import proxy

    config = ctx.config

    explicit = _explicit_version(ctx)

    def start_on(transport: Transport) -> str:
        started = []
        found = None if explicit else list_app_containers(transport, config)
        for role in roles_on(ctx, transport.host):
            if explicit:
                name = config.container_name(role.name, explicit)
            else:
                # The role's newest container: the one `app stop` stopped.
                newest = next(iter(found.of_role(role.name)), None) if found else None
                if newest is None:
                    raise HostError(transport.host, f"no {role.name} container to start")
                name = newest.name
            container_id = transport.check(["sh", "-c", _START, "sh", name]).stdout.strip()
            if role.proxied:
                proxy.deploy_target(ctx, transport, role, container_id).check()
            ctx.audit(f"Started app container {name}", hosts=[transport.host], role=role.name)
            started.append(name)
        return f"Started {', '.join(started)}"

    with deploy_lock(ctx):
        hosts = [host for host in ctx.hosts if roles_on(ctx, host)]
        for group in ctx.hooks.boot_plan(ctx, hosts):
            report(ctx, on_hosts(ctx, group, start_on), lambda text: text)
            if config.schema.boot.wait:
                time.sleep(config.schema.boot.wait)


def stop(ctx: Context) -> None:
    """Take the app out of the proxy, then stop its containers."""
    from shipyard.plugins import proxy

    def stop_on(transport: Transport) -> str:
        containers = list_app_containers(transport, ctx.config)
        stopped = []
        for role in roles_on(ctx, transport.host):
            if role.proxied:
                transport.run(proxy.proxy_cli("remove", ctx.config.container_prefix(role.name)))
            running = [c for c in containers.of_role(role.name) if c.running]
            if running:
                transport.check(remote_docker.stop(*(c.id for c in running)))
                stopped += [c.name for c in running]
            ctx.audit("Stopped app", hosts=[transport.host], role=role.name)
        return f"Stopped {', '.join(stopped) or 'nothing (not running)'}"

    with deploy_lock(ctx):
        _each_host(ctx, stop_on)


def details(ctx: Context) -> None:
    argv = remote_docker.ps(filters=app_filter(ctx.config), fmt=_TABLE)
    _each_host(ctx, lambda transport: transport.check(argv).stdout.rstrip())


def containers(ctx: Context) -> None:
    argv = remote_docker.ps(filters=app_filter(ctx.config), all_states=True, fmt=_TABLE)
    _each_host(ctx, lambda transport: transport.check(argv).stdout.rstrip())


def images(ctx: Context) -> None:
    argv = remote_docker.images(repository=ctx.config.repository)
    _each_host(ctx, lambda transport: transport.check(argv).stdout.rstrip())


def version(ctx: Context) -> None:
    """The version each host is serving (its primary role's current container)."""

    def version_on(transport: Transport) -> str:
        found = list_app_containers(transport, ctx.config)
        for role in roles_on(ctx, transport.host):
            current = _current(ctx, found, role)
            if current is not None:
                return found.version_of(ctx.config, current)
        return "(not running)"

    _each_host(ctx, version_on)


def stale_containers(ctx: Context, *, stop: bool) -> None:
    """Running containers of a role besides the one serving it."""

    def stale_on(transport: Transport) -> str:
        found = list_app_containers(transport, ctx.config)
        stale = []
        for role in roles_on(ctx, transport.host):
            current = _current(ctx, found, role)
            stale += [c for c in found.of_role(role.name) if c.running and c != current]
        if stale and stop:
            transport.check(remote_docker.stop(*(c.id for c in stale)))
        verb = "Stopped stale" if stop else "Stale"
        return f"{verb}: {', '.join(c.name for c in stale)}" if stale else "No stale containers"

    if stop:
        with deploy_lock(ctx):
            _each_host(ctx, stale_on)
    else:
        _each_host(ctx, stale_on)


def exec_(ctx: Context, words: tuple[str, ...], *, interactive: bool, reuse: bool, env: tuple[str, ...],
          detach: bool) -> None:
    """Run a command in the app's image: in a new container, or with ``--reuse`` in the
    running one. The command is split like a shell would, never run by the host's shell."""
    config = ctx.config
    # Kamal: the version asked for, else whatever each host has tagged latest (what it runs).
    version = _explicit_version(ctx) or config.latest_tag
    command = shlex.split(" ".join(words))
    extra = {key: value for key, _, value in (item.partition(":") for item in env)}

    def argv_for(transport: Transport, role: Role, tty: bool) -> list[str]:
        if reuse:
            current = _current(ctx, list_app_containers(transport, config), role)
            if current is None:
                raise HostError(transport.host, f"no running {role.name} container to reuse")
            return remote_docker.exec_(current.id, command, interactive=tty, env=extra)
        return remote_docker.run(
            config.image_ref(version), name=f"{config.container_prefix(role.name)}-exec-{version}-{_token()}",
            network="shipyard", restart=None, detach=detach,
            env={**role.env.clear, **extra}, options={"rm": not detach, "interactive": tty, "tty": tty},
            container_labels=remote_docker.labels(config.service, role.name, config.destination), cmd=command,
        )

    if interactive:
        host = ctx.hosts[0]
        role = roles_on(ctx, host)[0]
        transport = ctx.connections.get(host)
        ctx.audit(f"Executed cmd '{' '.join(words)}' on app version {version}", hosts=[host], role=role.name)
        status = transport.interactive(argv_for(transport, role, True))
        if status:
            raise ExitStatus(status)
        return

    def exec_on(transport: Transport) -> str:
        outputs = []
        for role in roles_on(ctx, transport.host):
            result = transport.check(argv_for(transport, role, False))
            ctx.audit(f"Executed cmd '{' '.join(words)}' on app version {version}", hosts=[transport.host],
                      role=role.name)
            outputs.append(result.stdout.rstrip("\n"))
        return "\n".join(outputs)

    _each_host(ctx, exec_on)


def _explicit_version(ctx: Context) -> str | None:
    """``--version`` or ``$VERSION``: app commands default to what runs, not to git HEAD."""
    import os

    return ctx.options.version or os.environ.get("VERSION") or None


def _token() -> str:
    import secrets

    return secrets.token_hex(3)


def logs(ctx: Context, *, since: str | None, lines: int | None, grep: str | None, grep_options: str | None,
         follow: bool, skip_timestamps: bool, container_id: str | None) -> None:
    config = ctx.config

    def argv_for(transport: Transport, tail: int) -> list[str]:
        target = container_id
        if target is None:
            found = list_app_containers(transport, config)
            current = next((_current(ctx, found, role) for role in roles_on(ctx, transport.host)), None)
            if current is None:
                raise HostError(transport.host, "no running app container")
            target = current.id
        docker = remote_docker.logs(target, since=since, tail=tail, timestamps=not skip_timestamps, follow=follow)
        if not grep:
            return ["sh", "-c", '"$@" 2>&1', "sh", *docker]
        options = shlex.split(grep_options or "")
        return ["sh", "-c", 'n=$1; shift; "$@" 2>&1 | grep ' + " ".join(shlex.quote(o) for o in options) + ' -e "$n"',
                "sh", grep, *docker]

    if follow:
        host = ctx.hosts[0]
        transport = ctx.connections.get(host)
        status = transport.interactive(argv_for(transport, lines if lines is not None else 10))
        if status:
            raise ExitStatus(status)
        return
    _each_host(ctx, lambda transport: transport.run(argv_for(transport, lines if lines is not None else 100)).stdout.rstrip())


def maintenance(ctx: Context, *, drain_timeout: int | None, message: str | None) -> None:
    from shipyard.plugins import proxy

    seconds = drain_timeout if drain_timeout is not None else ctx.config.schema.drain_timeout
    flags = [f"--drain-timeout={seconds}s", *([f"--message={message}"] if message else [])]
    _proxy_each_role(ctx, lambda prefix: proxy.proxy_cli("stop", prefix, *flags), "Maintenance mode on")


def live(ctx: Context) -> None:
    from shipyard.plugins import proxy

    _proxy_each_role(ctx, lambda prefix: proxy.proxy_cli("resume", prefix), "Live")


def _proxy_each_role(ctx: Context, argv: Callable[[str], list[str]], done: str) -> None:
    def on(transport: Transport) -> str:
        roles = [role for role in roles_on(ctx, transport.host) if role.proxied]
        for role in roles:
            transport.check(argv(ctx.config.container_prefix(role.name)))
        return f"{done}: {', '.join(r.name for r in roles)}" if roles else "No proxied roles"

    with deploy_lock(ctx):
        _each_host(ctx, on)


def remove(ctx: Context) -> None:
    with deploy_lock(ctx):
        remove_everything(ctx)


def remove_everything(ctx: Context) -> None:
    """Stop the app, remove its containers, images and directories on the hosts in play."""
    from shipyard.plugins import proxy

    config = ctx.config
    app_dir = f"{config.run_directory}/apps/{config.service_and_destination}"

    def remove_on(transport: Transport) -> str:
        for role in roles_on(ctx, transport.host):
            if role.proxied:
                transport.run(proxy.proxy_cli("remove", config.container_prefix(role.name)))
        found = list_app_containers(transport, config)
        if found.containers:
            transport.check(remote_docker.rm(*(c.id for c in found.containers), force=True))
        tags = transport.check(remote_docker.images(filters={"service": config.service},
                                                    fmt="{{.Repository}}:{{.Tag}}")).stdout.split()
        tags = [t for t in tags if not t.endswith(":<none>") and t.rsplit(":", 1)[0] == config.repository]
        if tags:
            transport.run(remote_docker.rmi(*tags, force=True))
        transport.check(["rm", "-rf", "--", app_dir, proxy.app_config_dir(config)])
        ctx.audit("Removed app containers, images and directories", hosts=[transport.host])
        return f"Removed {len(found.containers)} containers and {len(tags)} images"

    report(ctx, on_hosts(ctx, ctx.hosts, remove_on), lambda text: text)

