"""Booting the new version of one role on one host (the ``shipyard_boot_container`` step).

In Kamal's order: rename a container that already has the new name, upload the role's env
file (0600, so secrets never touch a command line), ``docker run`` the new container,
switch traffic to it through the proxy (proxied roles) or wait until it is ready (other
roles), then stop the previous container. If the new container never becomes healthy it
is stopped, the old one keeps serving, and the error shows the container's health, the
tail of its log and the tail of the proxy's log.
"""

from __future__ import annotations

import secrets as token
import shlex
import time
from typing import TYPE_CHECKING

from shipyard.core import hookimpl, remote_docker
from shipyard.core.containers import AppContainers, Container, listing_argv, parse_listing
from shipyard.core.errors import HostError, ShipyardError
from shipyard.core.records import BootResult
from shipyard.core.remote_docker import NETWORK, PROXY_CONTAINER

if TYPE_CHECKING:
    from shipyard.core.config.model import Config, Role
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

_STATUS = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
_DIAGNOSE = (
    'docker inspect --format "$1" "$2" 2>&1; echo "---8<---"; docker logs --tail 10 "$2" 2>&1; '
    'echo "---8<---"; docker logs --tail 10 "$3" 2>&1; true'
)


_RETIRE = (
    'old=$1; timeout=$2; shift 2; if [ -n "$old" ]; then '
    'docker stop ${timeout:+--time "$timeout"} "$old" >/dev/null || exit; fi; docker tag "$1" "$2"'
)
_WRITE_ENV_AND_RUN = 'umask 077 && cat > "$1" && chmod 600 "$1" && shift && exec "$@"'


class BootFailed(HostError):
    """A new container did not become healthy; the message carries what would tell why."""


def env_dir(config: Config) -> str:
    return f"{config.run_directory}/apps/{config.service_and_destination}/env/roles"


def env_file_contents(ctx: Context, role: Role, host: str) -> bytes:
    """``VAR=value`` lines for the role's secrets and the host's tag secrets. Docker's env
    files have no quoting and no multi-line values, so newlines are written as ``\\n``
    (as Kamal does)."""
    pairs = list(role.env.secrets)
    for tag in ctx.config.host_tags(host):
        tagged = ctx.config.schema.env.tags.get(tag)
        if tagged is not None and not isinstance(tagged, dict):
            pairs += [(entry.partition(":")[0], entry.partition(":")[2] or entry) for entry in tagged.secret]
    lines = [f"{variable}={ctx.secrets[secret].replace(chr(10), chr(92) + 'n')}" for variable, secret in pairs]
    return ("\n".join(lines) + "\n" if lines else "").encode()


def tag_clear_env(config: Config, host: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for tag in config.host_tags(host):
        tagged = config.schema.env.tags.get(tag)
        values = tagged if isinstance(tagged, dict) else tagged.clear if tagged is not None else {}
        found.update({k: str(v) for k, v in values.items()})
    return found


def container_env(ctx: Context, name: str, host: str) -> dict[str, str]:
    facts = {"CONTAINER_NAME": name, "VERSION": ctx.version, "HOST": host}
    if ctx.destination:
        facts["DESTINATION"] = ctx.destination
    return {f"{prefix}_{key}": value for prefix in ("SHIPYARD", "KAMAL") for key, value in facts.items()}


def run_argv(ctx: Context, role: Role, host: str, name: str, env_file: str) -> list[str]:
    config = ctx.config
    return remote_docker.run(
        config.image_ref(ctx.version),
        name=name,
        network=NETWORK,
        hostname=f"{host[:51]}-{token.token_hex(6)}",
        env={**container_env(ctx, name, host), **role.env.clear, **tag_clear_env(config, host)},
        env_files=[env_file],
        log_driver=role.logging.driver,
        log_options={k: str(v) for k, v in (role.logging.options or {"max-size": "10m"}).items()},
        volumes=config.schema.volumes,
        container_labels={**role.labels, **remote_docker.labels(config.service, role.name, config.destination)},
        options=role.options,
        cmd=shlex.split(role.cmd) if role.cmd else [],
    )


def prepare(ctx: Context, transport: Transport) -> AppContainers:
    """The env directory exists and the app's containers are known: one round trip."""
    config = ctx.config
    listing = transport.check(["sh", "-c", 'mkdir -p "$1" && shift && exec "$@"', "sh", env_dir(config),
                               *listing_argv(config)])
    return parse_listing(transport.host, listing.stdout)


@hookimpl(trylast=True)
def shipyard_boot_container(ctx: Context, host: str, role: str) -> BootResult:
    config = ctx.config
    spec = config.role(role)
    transport = ctx.connections.get(host)
    name = config.container_name(role, ctx.version)
    containers = prepare(ctx, transport)
    old = containers.current(config, role, excluding=name)
    stale = [c for c in containers.of_role(role) if c.running and c != old and c.name != name]
    if stale:
        # Leftovers of an interrupted deploy: nothing routes to them (Kamal stops them first).
        transport.check(remote_docker.stop(*(c.id for c in stale)))
        ctx.output.info(f"Stopped stale {', '.join(c.name for c in stale)}", host=host)
    clash = containers.named(name)
    if clash is not None:
        replaced = f"{name}_replaced_{token.token_hex(8)}"
        ctx.audit(f"Renaming container {ctx.version} to {replaced}", hosts=[host], role=role)
        transport.check(remote_docker.rename(clash.id, replaced))

    env_file = f"{env_dir(config)}/{role}.env"
    ctx.audit(f"Booted app version {ctx.version}", hosts=[host], role=role)
    # One round trip: write the env file (0600, secrets arrive on stdin, never on a
    # command line) and run the container.
    container_id = transport.check(
        ["sh", "-c", _WRITE_ENV_AND_RUN, "sh", env_file, *run_argv(ctx, spec, host, name, env_file)],
        stdin=env_file_contents(ctx, spec, host),
    ).stdout.strip()
    boot = BootResult(host, role, name, container_id, replaced=old.name if old else None)
    try:
        if spec.proxied:
            ctx.hooks.switch_traffic(ctx, host, role, boot)
        else:
            wait_until_ready(ctx, transport, container_id)
    except ShipyardError as error:
        raise _failed(ctx, transport, boot, error) from error
    retire(ctx, transport, spec, old)
    ctx.output.info(f"Booted {name}" + (f" (replacing {old.name})" if old else ""), host=host)
    return boot


def retire(ctx: Context, transport: Transport, role: Role, old: Container | None) -> None:
    """The new container serves: stop the old one and tag the new image as latest, in one
    round trip. Proxied roles have drained by now, so Docker's default stop timeout
    suffices; other roles get ``drain_timeout`` to finish their work (Kamal). The tag
    moves host by host, so ``latest`` always names what that host runs, also when a later
    boot group fails."""
    config = ctx.config
    timeout = role.stop_timeout if role.stop_timeout is not None else (
        None if role.proxied else config.schema.drain_timeout
    )
    image, latest = config.image_ref(ctx.version), config.image_ref(config.latest_tag)
    transport.check(["sh", "-c", _RETIRE, "sh", old.id if old else "", "" if timeout is None else str(timeout),
                     image, latest])
    ctx.audit(f"Tagging {image} as the latest image", hosts=[transport.host], role=role.name)


def wait_until_ready(ctx: Context, transport: Transport, container_id: str) -> None:
    """Non-proxied roles: healthy (with a HEALTHCHECK), or still running after
    ``readiness_delay`` seconds (without), within ``deploy_timeout``."""
    schema = ctx.config.schema
    deadline = time.monotonic() + schema.deploy_timeout
    running_since: float | None = None
    delay = 0.5
    while True:
        status = transport.check(remote_docker.inspect(container_id, _STATUS)).stdout.strip()
        now = time.monotonic()
        if status == "healthy":
            return
        if status == "running":
            running_since = running_since or now
            if now - running_since >= schema.readiness_delay:
                return
        elif status not in ("starting", "created", "restarting"):
            raise HostError(transport.host, f"container is {status}")
        if now >= deadline:
            raise HostError(transport.host, f"container is still {status} after {schema.deploy_timeout}s (deploy_timeout)")
        wait = delay if running_since is None else min(delay, max(0.1, schema.readiness_delay - (now - running_since)))
        time.sleep(wait)
        delay = min(delay * 2, 3.0)


def _failed(ctx: Context, transport: Transport, boot: BootResult, error: ShipyardError) -> BootFailed:
    diagnosis = transport.run(["sh", "-c", _DIAGNOSE, "sh", _STATUS, boot.container_id, PROXY_CONTAINER]).stdout
    health, app_log, proxy_log = [*diagnosis.split("---8<---\n"), "", ""][:3]
    transport.run(remote_docker.stop(boot.container_id, timeout=1))
    reason = str(error).removeprefix(f"[{boot.host}] ")
    lines = [f"{boot.role}: {boot.container} failed: {reason}", f"  health: {health.strip() or 'unknown'}"]
    lines += ["  app log (last lines):", *(f"    {line}" for line in app_log.strip().splitlines() or ["(empty)"])]
    if ctx.config.role(boot.role).proxied:
        lines += ["  proxy log (last lines):", *(f"    {line}" for line in proxy_log.strip().splitlines() or ["(empty)"])]
    lines.append(f"  the new container was stopped; {boot.replaced or 'no older container'} keeps serving")
    return BootFailed(boot.host, "\n".join(lines))
