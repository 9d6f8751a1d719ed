"""The proxy on each host: its container, and switching an app's traffic through it.

Every proxy host runs one ``shipyard-proxy`` container on the ``shipyard`` network,
shared by every app deployed there (routing by host name and path). Apps talk to it the
way Kamal talks to kamal-proxy: ``docker exec shipyard-proxy shipyard-proxy deploy
<service>-<role>[-<dest>] --target=<container id>:<port> ...``, which returns once the new
container is healthy, traffic has moved and the old one has drained.

Each app that uses the proxy on a host keeps a directory
``.shipyard/proxy/apps-config/<service>[-<dest>]``; the proxy is removed only when the
last one is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core import hookimpl, remote_docker
from shipyard.core.errors import CommandFailed, HostError
from shipyard.core.remote_docker import NETWORK, PROXY_CONTAINER

if TYPE_CHECKING:
    from shipyard.core.config.model import Config, Role
    from shipyard.core.config.schema import ProxyConfig, ProxyRunConfig
    from shipyard.core.context import Context
    from shipyard.core.records import BootResult
    from shipyard.core.transport import CommandResult, Transport

PROXY_CLI = "shipyard-proxy"
STATE_VOLUME = "shipyard-proxy-config"
CONTAINER_HOME = "/home/kamal-proxy"
IMAGE_TITLE_LABEL = "org.opencontainers.image.title=kamal-proxy"


def apps_config_dir(config: Config) -> str:
    return f"{config.run_directory}/proxy/apps-config"


def app_config_dir(config: Config) -> str:
    return f"{apps_config_dir(config)}/{config.service_and_destination}"


def run_settings(config: Config) -> ProxyRunConfig:
    from shipyard.core.config.schema import ProxyRunConfig

    return config.schema.proxy.run or ProxyRunConfig()


def image(config: Config) -> str:
    run = run_settings(config)
    repository = f"{run.registry}/{run.repository}" if run.registry else run.repository
    return f"{repository}:{run.version}"


def proxy_hosts(config: Config, hosts: list[str]) -> list[str]:
    """The hosts among ``hosts`` that run a proxied role."""
    proxied = {h for role in config.roles if role.proxied for h in role.host_names}
    return [h for h in hosts if h in proxied]


def run_argv(config: Config, home: str) -> list[str]:
    """``docker run`` for the proxy container; ``home`` is the SSH user's home on the host
    (Docker needs the apps-config bind mount as an absolute path)."""
    run = run_settings(config)
    publish: list[str] = []
    if run.publish:
        for ip in run.bind_ips or [""]:
            prefix = f"[{ip}]:" if ":" in ip else f"{ip}:" if ip else ""
            publish += [f"{prefix}{run.http_port}:80", f"{prefix}{run.https_port}:443"]
    command = [PROXY_CLI, "run"]
    if run.debug:
        command.append("--debug")
    if run.metrics_port:
        command.append(f"--metrics-port={run.metrics_port}")
    options = dict(run.options)
    if run.metrics_port:
        options.setdefault("expose", str(run.metrics_port))
    return remote_docker.run(
        image(config),
        name=PROXY_CONTAINER,
        network=NETWORK,
        volumes=[
            f"{STATE_VOLUME}:{CONTAINER_HOME}/.config/kamal-proxy",
            f"{home}/{apps_config_dir(config)}:{CONTAINER_HOME}/.apps-config",
        ],
        publish=publish,
        container_labels={"shipyard.proxy": "true"},
        log_options={"max-size": run.log_max_size},
        options=options,
        cmd=command,
    )


# One round trip: the network (an "already exists" is fine), this app's config directory,
# the SSH user's home, and whether the proxy container exists and runs.
_PREPARE = (
    'docker network create "$1" >/dev/null 2>&1; mkdir -p "$2" || exit 1; printf "%s\\n" "$HOME"; '
    'docker inspect --format "{{.State.Running}}" "$3" 2>/dev/null || echo missing'
)


def ensure_network(transport: Transport) -> None:
    created = transport.run(remote_docker.network_create(NETWORK))
    if not created.ok and "already exists" not in created.stderr:
        created.check()


def boot(ctx: Context, transport: Transport) -> str:
    """Start the proxy container on this host if it is not running (a running proxy is
    never reconfigured; that takes ``proxy reboot``). Returns what happened."""
    config = ctx.config
    prepared = transport.check(["sh", "-c", _PREPARE, "sh", NETWORK, app_config_dir(config), PROXY_CONTAINER])
    home, state = prepared.stdout.splitlines()[0], prepared.stdout.split()[-1]
    if state == "true":
        return "Proxy is running"
    if state == "false":
        transport.check(remote_docker.start(PROXY_CONTAINER))
        return "Started proxy"
    reference = image(config)
    pulled = transport.run(remote_docker.pull(reference))
    if not pulled.ok:
        raise CommandFailed(transport.host, ["docker", "pull", reference], pulled.exit_status, pulled.stderr)
    transport.check(run_argv(config, home))
    wait_until_answering(transport)
    return f"Booted proxy {reference}"


def wait_until_answering(transport: Transport, timeout: float = 30.0) -> None:
    """A booted proxy counts once its control socket answers (it has restored its routes
    by then), so a rolling reboot never moves on to the next host too early."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        answer = transport.run(proxy_cli("list"))
        if answer.ok:
            return
        if time.monotonic() >= deadline:
            raise CommandFailed(transport.host, ["shipyard-proxy", "list"], answer.exit_status, answer.stderr)
        time.sleep(0.2)


def remove_container(transport: Transport) -> None:
    transport.check(remote_docker.rm(PROXY_CONTAINER, force=True))


def proxy_cli(*args: str) -> list[str]:
    return remote_docker.exec_(PROXY_CONTAINER, [PROXY_CLI, *args])


def _seconds(value: int) -> str:
    return f"{value}s"


def deploy_flags(ctx: Context, role: Role, proxy: ProxyConfig, target: str) -> list[str]:
    """kamal-proxy's deploy flags, in Kamal's order, as ``--flag=value`` words."""
    schema = ctx.config.schema
    flags = [f"--target={target}:{proxy.app_port}"]
    flags += [f"--host={host}" for host in proxy.host_names]
    if proxy.ssl is True:
        flags.append("--tls")
    elif proxy.ssl is not False:
        tls_dir = f"{CONTAINER_HOME}/.apps-config/{ctx.config.service_and_destination}/tls/{role.name}"
        flags += ["--tls", f"--tls-certificate-path={tls_dir}/cert.pem", f"--tls-private-key-path={tls_dir}/key.pem"]
    flags += [f"--deploy-timeout={_seconds(schema.deploy_timeout)}", f"--drain-timeout={_seconds(schema.drain_timeout)}"]
    check = proxy.healthcheck
    flags += [
        f"--health-check-interval={_seconds(check.interval)}",
        f"--health-check-timeout={_seconds(check.timeout)}",
        f"--health-check-path={check.path}",
    ]
    if proxy.response_timeout:
        flags.append(f"--target-timeout={_seconds(proxy.response_timeout)}")
    buffering = proxy.buffering
    flags += [f"--buffer-requests={'true' if buffering.requests else 'false'}",
              f"--buffer-responses={'true' if buffering.responses else 'false'}"]
    if buffering.memory:
        flags.append(f"--buffer-memory={buffering.memory}")
    if buffering.max_request_body is not None and buffering.requests:
        flags.append(f"--max-request-body={buffering.max_request_body}")
    if buffering.max_response_body is not None and buffering.responses:
        flags.append(f"--max-response-body={buffering.max_response_body}")
    flags += [f"--path-prefix={prefix}" for prefix in proxy.prefixes]
    if proxy.strip_path_prefix is not None:
        flags.append(f"--strip-path-prefix={'true' if proxy.strip_path_prefix else 'false'}")
    if proxy.forward_headers is not None:
        flags.append(f"--forward-headers={'true' if proxy.forward_headers else 'false'}")
    if proxy.ssl_redirect is False:
        flags.append("--tls-redirect=false")
    flags += [f"--log-request-header={h}" for h in proxy.logging.request_headers]
    flags += [f"--log-response-header={h}" for h in proxy.logging.response_headers]
    if schema.error_pages_path:
        version_dir = error_pages_dir(ctx).removeprefix(apps_config_dir(ctx.config))
        flags.append(f"--error-pages={CONTAINER_HOME}/.apps-config{version_dir}")
    return flags


def error_pages_dir(ctx: Context) -> str:
    """Custom error pages live per version, so a rollback brings its own pages back."""
    return f"{app_config_dir(ctx.config)}/error_pages/{ctx.version}"


def upload_app_files(ctx: Context, transport: Transport, role: Role) -> None:
    """What the proxy reads from the app's config directory: custom TLS certificates (from
    secrets) and custom error pages (from ``error_pages_path``)."""
    config = ctx.config
    files: list[tuple[bytes, str]] = []
    if role.proxy is not None and not isinstance(role.proxy.ssl, bool):
        tls = f"{app_config_dir(config)}/tls/{role.name}"
        files += [(ctx.secrets[role.proxy.ssl.certificate_pem].encode(), f"{tls}/cert.pem"),
                  (ctx.secrets[role.proxy.ssl.private_key_pem].encode(), f"{tls}/key.pem")]
    if config.schema.error_pages_path:
        local = config.project_dir / config.schema.error_pages_path
        files += [(page.read_bytes(), f"{error_pages_dir(ctx)}/{page.name}") for page in sorted(local.glob("*.html"))]
    if not files:
        return
    directories = sorted({path.rsplit("/", 1)[0] for _, path in files})
    transport.check(["mkdir", "-p", *directories])
    for content, path in files:
        # The proxy runs as its own user inside the container: it must be able to read these.
        transport.upload(content, path, mode=0o644)


def deploy_target(ctx: Context, transport: Transport, role: Role, container_id: str) -> CommandResult:
    assert role.proxy is not None
    upload_app_files(ctx, transport, role)
    service = ctx.config.container_prefix(role.name)
    return transport.run(proxy_cli("deploy", service, *deploy_flags(ctx, role, role.proxy, container_id[:12])))


@hookimpl(trylast=True)
def shipyard_switch_traffic(ctx: Context, host: str, role: str, boot: BootResult) -> bool | None:
    spec = ctx.config.role(role)
    if spec.proxy is None:
        return None
    transport = ctx.connections.get(host)
    result = deploy_target(ctx, transport, spec, boot.container_id)
    if not result.ok:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1].removeprefix("Error: ")
        raise HostError(host, f"proxy did not switch {spec.name} to {boot.container}: {reason}")
    return True


# --- the `proxy` commands ----------------------------------------------------------------


def reboot(ctx: Context, *, rolling: bool) -> None:
    """Replace the proxy container (for a new image or new ``proxy.run`` settings); its
    routes come back from the state volume. ``--rolling`` does one host at a time."""
    from shipyard.core import registry_tunnel
    from shipyard.core.parallel import on_hosts, report

    hosts = proxy_hosts(ctx.config, ctx.hosts)
    groups = [[host] for host in hosts] if rolling else [hosts]

    def reboot_on(transport: Transport) -> str:
        registry_tunnel.ensure(ctx, transport)
        remove_container(transport)
        booted = boot(ctx, transport)
        ctx.audit("Rebooted proxy", hosts=[transport.host])
        return booted

    for group in groups:
        ctx.hooks.pre_proxy_reboot(ctx, group)
        report(ctx, on_hosts(ctx, group, reboot_on), lambda line: line)
        ctx.hooks.post_proxy_reboot(ctx, group)


def container_command(ctx: Context, action: str) -> None:
    """``start``, ``stop`` or ``restart`` the existing proxy container."""
    from shipyard.core.parallel import on_hosts, report

    argv = ["docker", "container", action, PROXY_CONTAINER]
    done = {"start": "Started proxy", "stop": "Stopped proxy", "restart": "Restarted proxy"}[action]

    def act(transport: Transport) -> str:
        transport.check(argv)
        ctx.audit(done, hosts=[transport.host])
        return done

    report(ctx, on_hosts(ctx, proxy_hosts(ctx.config, ctx.hosts), act), lambda line: line)


def details(ctx: Context) -> None:
    from shipyard.core.parallel import on_hosts, report

    argv = remote_docker.ps(name=PROXY_CONTAINER, all_states=True,
                            fmt="table {{.ID}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}")
    report(ctx, on_hosts(ctx, proxy_hosts(ctx.config, ctx.hosts), lambda t: t.check(argv).stdout.rstrip()),
           lambda text: text)


def logs(ctx: Context, *, since: str | None, lines: int | None, grep: str | None, follow: bool,
         skip_timestamps: bool) -> None:
    from shipyard.core.errors import ExitStatus
    from shipyard.core.parallel import on_hosts, report

    tail = lines if lines is not None else (10 if follow else 100)
    docker = remote_docker.logs(PROXY_CONTAINER, since=since, tail=tail, timestamps=not skip_timestamps,
                                follow=follow)
    argv = ["sh", "-c", 'n=$1; shift; if [ -n "$n" ]; then "$@" 2>&1 | grep -e "$n"; else "$@" 2>&1; fi',
            "sh", grep or "", *docker]
    hosts = proxy_hosts(ctx.config, ctx.hosts)
    if follow:
        status = ctx.connections.get(hosts[0]).interactive(argv)
        if status:
            raise ExitStatus(status)
        return
    report(ctx, on_hosts(ctx, hosts, lambda t: t.run(argv).stdout.rstrip()), lambda text: text)


def other_apps(transport: Transport, config: Config) -> list[str]:
    """Apps besides this one that still use the proxy on this host."""
    listing = transport.run(["ls", "-1", apps_config_dir(config)])
    mine = config.service_and_destination
    return [name for name in listing.stdout.split() if name != mine] if listing.ok else []


def remove(ctx: Context, *, force: bool) -> None:
    """Remove the proxy container and image, unless other apps still use it."""
    from shipyard.core.parallel import on_hosts, report

    config = ctx.config

    def remove_on(transport: Transport) -> str:
        others = other_apps(transport, config)
        if others and not force:
            return f"Proxy kept: still used by {', '.join(others)}"
        remove_container(transport)
        transport.run(remote_docker.rmi(image(config), force=True))
        transport.check(["rm", "-rf", "--", f"{config.run_directory}/proxy"])
        ctx.audit("Removed proxy container", hosts=[transport.host])
        return "Removed proxy"

    report(ctx, on_hosts(ctx, proxy_hosts(config, ctx.hosts), remove_on), lambda line: line)
