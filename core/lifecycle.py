"""The deploy lifecycle, in Kamal's order. Each step is a hook (``core/hookspecs.py``);
this module only says in which order they run and what is held around them.

deploy   = deliver (build, push, pull) → lock → pre-deploy → proxy boot → app boot → prune
           → unlock → post-deploy
redeploy = deliver → lock → pre-deploy → app boot → unlock → post-deploy
rollback = lock → check every host has VERSION → pre-deploy → app boot → unlock → post-deploy
setup    = lock → bootstrap → deploy
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from shipyard.core import registry_tunnel
from shipyard.core.errors import HostError, ShipyardError
from shipyard.core.lock import deploy_lock
from shipyard.core.parallel import on_hosts, report

if TYPE_CHECKING:
    from shipyard.core.config.model import Role
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

_PULL = 'docker pull --quiet "$1" >/dev/null && docker image inspect --format "{{index .Config.Labels \\"service\\"}}" "$1"'


def deploy(ctx: Context, *, skip_push: bool = False, no_cache: bool = False) -> None:
    _deploy(ctx, build=not skip_push, no_cache=no_cache, full=True)


def redeploy(ctx: Context, *, skip_push: bool = False, no_cache: bool = False) -> None:
    _deploy(ctx, build=not skip_push, no_cache=no_cache, full=False)


def setup(ctx: Context, *, skip_push: bool = False, no_cache: bool = False) -> None:
    from shipyard.core.server import bootstrap

    with deploy_lock(ctx):
        bootstrap(ctx)
        _deploy(ctx, build=not skip_push, no_cache=no_cache, full=True)


def rollback(ctx: Context, version: str) -> None:
    ctx.version = version
    started = time.monotonic()
    try:
        with deploy_lock(ctx):
            ensure_version_everywhere(ctx, version)
            ctx.hooks.pre_deploy(ctx)
            boot_app(ctx)
    except ShipyardError as error:
        _failed(ctx, error)
        raise
    _succeeded(ctx, "Rolled back to", started)


def _deploy(ctx: Context, *, build: bool, no_cache: bool, full: bool) -> None:
    started = time.monotonic()
    try:
        deliver(ctx, build=build, no_cache=no_cache)
        with deploy_lock(ctx):
            ctx.hooks.pre_deploy(ctx)
            if full:
                boot_proxies(ctx)
            boot_app(ctx)
            if full:
                prune(ctx)
    except ShipyardError as error:
        _failed(ctx, error)
        raise
    _succeeded(ctx, "Deployed", started)


def _succeeded(ctx: Context, verb: str, started: float) -> None:
    runtime = time.monotonic() - started
    ctx.audit(f"{verb} version {ctx.version} in {runtime:.0f}s", broadcast="true", version=ctx.version,
              runtime=f"{runtime:.0f}")
    ctx.output.info(f"{verb} {ctx.config.service} {ctx.version} in {runtime:.1f}s")
    ctx.hooks.post_deploy(ctx, runtime)


def _failed(ctx: Context, error: ShipyardError) -> None:
    try:
        ctx.hooks.deploy_failed(ctx, error)
    except ShipyardError as secondary:
        ctx.output.warn(f"deploy-failed hook: {secondary}")


# --- build and distribute ----------------------------------------------------------------


def deliver(ctx: Context, *, build: bool, no_cache: bool = False) -> None:
    """Build and push the image (unless ``-P``), then pull it on every host."""
    ctx.connections.pre_connect()
    if build:
        from shipyard.core.build import build_and_push

        build_and_push(ctx, no_cache=no_cache)
    pull(ctx)


def pull(ctx: Context) -> None:
    image = ctx.config.image_ref(ctx.version)
    service = ctx.config.service

    def pull_on(transport: Transport) -> str:
        registry_tunnel.ensure(ctx, transport)
        result = transport.check(["sh", "-c", _PULL, "sh", image])
        if result.stdout.strip() != service:
            raise HostError(transport.host, f"image {image} is missing the label service={service} (build it with shipyard)")
        ctx.audit(f"Pulled image with version {ctx.version}", hosts=[transport.host])
        return f"Pulled {image}"

    report(ctx, on_hosts(ctx, ctx.hosts, pull_on, progress=f"Pulling {image}"), lambda line: line)


# --- proxy -------------------------------------------------------------------------------


def boot_proxies(ctx: Context) -> None:
    """The ``shipyard`` network on every host, and the proxy on every host of a proxied
    role."""
    from shipyard.plugins import proxy

    proxied = set(proxy.proxy_hosts(ctx.config, ctx.hosts))

    def boot_on(transport: Transport) -> str | None:
        if transport.host not in proxied:
            proxy.ensure_network(transport)
            return None
        registry_tunnel.ensure(ctx, transport)
        return proxy.boot(ctx, transport)

    report(ctx, on_hosts(ctx, ctx.hosts, boot_on, progress="Booting the proxy"), lambda line: line)


# --- app boot ----------------------------------------------------------------------------


class PrimaryBarrier:
    """Other roles wait for the first healthy container of the primary role; if it fails,
    they do not boot (Kamal's barrier). Shared across boot groups."""

    def __init__(self, primary: str, required: bool) -> None:
        self.primary = primary
        self._decided = threading.Event()
        self._healthy = not required
        if not required:
            self._decided.set()

    def open(self) -> None:
        self._healthy = True
        self._decided.set()

    def close(self) -> None:
        if not self._decided.is_set():
            self._healthy = False
            self._decided.set()

    def wait(self, host: str, role: str, timeout: float) -> None:
        if not self._decided.wait(timeout) or not self._healthy:
            raise HostError(host, f"first {self.primary} container is unhealthy, not booting {role}")


def roles_on(ctx: Context, host: str) -> list[Role]:
    """The roles in play on ``host``, primary role first."""
    return [role for role in ctx.roles if host in role.host_names]


def boot_app(ctx: Context) -> None:
    """Boot the version on every host in play, group by group (``boot.limit``), with
    pre/post-app-boot around each group and ``boot.wait`` after it."""
    config = ctx.config
    primary = config.schema.primary_role
    hosts = [host for host in ctx.hosts if roles_on(ctx, host)]
    in_play = {role.name for role in ctx.roles}
    barrier = PrimaryBarrier(primary, required=primary in in_play and len(in_play) > 1)
    patience = float(config.schema.deploy_timeout + config.schema.drain_timeout) * 2

    def boot_host(transport: Transport) -> list[str]:
        booted = []
        for role in roles_on(ctx, transport.host):
            if role.name != primary:
                barrier.wait(transport.host, role.name, patience)
            try:
                booted.append(ctx.hooks.boot_container(ctx, transport.host, role.name).container)
            except ShipyardError:
                if role.name == primary:
                    barrier.close()
                raise
            if role.name == primary:
                barrier.open()
        return booted

    ctx.output.set_hosts(hosts)
    for group in ctx.hooks.boot_plan(ctx, hosts):
        ctx.hooks.pre_app_boot(ctx, group)
        results = on_hosts(ctx, group, boot_host, progress=f"Booting {ctx.version} on {len(group)} host(s)")
        barrier.close()  # a primary that never booted in this group must not hold others forever
        results.raise_failures()
        ctx.hooks.post_app_boot(ctx, group)
        if config.schema.boot.wait:
            time.sleep(config.schema.boot.wait)


def ensure_version_everywhere(ctx: Context, version: str) -> None:
    """Rollback touches nothing unless every host in play still has a container of
    ``version`` for every one of its roles."""
    from shipyard.core.containers import list_app_containers

    config = ctx.config

    def missing_on(transport: Transport) -> list[str]:
        containers = list_app_containers(transport, config)
        return [role.name for role in roles_on(ctx, transport.host)
                if containers.named(config.container_name(role.name, version)) is None]

    results = on_hosts(ctx, ctx.hosts, missing_on)
    results.raise_failures()
    missing = [f"{host} ({', '.join(roles)})" for host, roles in results.succeeded.items() if roles]
    if missing:
        raise ShipyardError(
            f"The app version '{version}' is not available as a container on {', '.join(missing)} "
            "(use 'shipyard app containers' for available versions)"
        )


# --- prune -------------------------------------------------------------------------------


def prune(ctx: Context) -> None:
    def prune_on(transport: Transport) -> str:
        result = ctx.hooks.prune(ctx, transport.host)
        if result is None:
            return "Nothing pruned"
        return f"Pruned {len(result.removed_containers)} containers and {len(result.removed_images)} images"

    report(ctx, on_hosts(ctx, ctx.hosts, prune_on, progress="Pruning"), lambda line: line)
