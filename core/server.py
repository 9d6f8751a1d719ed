"""``server exec`` and ``server bootstrap``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core.errors import CommandFailed, ExitStatus, HostError, ShipyardError
from shipyard.core.parallel import on_hosts, report

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import CommandResult, Transport

# Static scripts: no config value is ever spliced into them.
_DOCKER_PRESENT = "command -v docker >/dev/null 2>&1"
_INSTALL_DOCKER = (
    "if command -v apt-get >/dev/null 2>&1; then"
    " export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq docker.io;"
    " elif command -v dnf >/dev/null 2>&1; then dnf install -y docker;"
    " elif command -v yum >/dev/null 2>&1; then yum install -y docker;"
    " elif command -v apk >/dev/null 2>&1; then apk add docker;"
    " else echo 'no supported package manager (apt-get, dnf, yum, apk)' >&2; exit 1; fi"
)


def execute(ctx: Context, words: tuple[str, ...], *, interactive: bool) -> None:
    """Run the user's command with the remote shell, as ``ssh host CMD`` would."""
    command = " ".join(words)
    argv = ["sh", "-c", command]
    if interactive:
        host = ctx.hosts[0]
        ctx.audit(f"Executed cmd '{command}' on {host}", hosts=[host])
        status = ctx.connections.get(host).interactive(argv)
        if status:
            raise ExitStatus(status)
        return

    def run(transport: Transport) -> CommandResult:
        result = transport.run(argv)
        if not result.ok:
            # Still show what it printed before failing, then report the failure.
            if result.stdout.strip():
                ctx.output.result(result.stdout.rstrip("\n"), host=transport.host)
            raise CommandFailed(transport.host, argv[2:], result.exit_status, result.stderr)
        return result

    ctx.output.set_hosts(ctx.hosts)
    results = on_hosts(ctx, ctx.hosts, run)
    if results.succeeded:
        ctx.audit(f"Executed cmd '{command}'", hosts=list(results.succeeded))
    report(ctx, results, lambda result: result.stdout.rstrip("\n"))


def bootstrap(ctx: Context) -> None:
    """Make sure Docker is installed on every host (installing it as root when missing),
    create the run directory, then fire ``docker_setup``."""
    user = ctx.config.schema.ssh.user
    run_directory = ctx.config.run_directory

    def prepare(transport: Transport) -> str:
        present = transport.run(["sh", "-c", _DOCKER_PRESENT]).ok
        if not present:
            if user != "root":
                raise HostError(transport.host, f"Docker is missing and the SSH user {user} is not root: install docker.io there")
            ctx.output.info("Installing Docker...", host=transport.host)
            transport.check(["sh", "-c", _INSTALL_DOCKER], timeout=900)
        transport.check(["mkdir", "-p", run_directory])
        version = transport.check(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()
        return f"Docker {version} {'was installed' if not present else 'is ready'}"

    ctx.output.set_hosts(ctx.hosts)
    report(ctx, on_hosts(ctx, ctx.hosts, prepare), lambda line: line)
    ctx.hooks.docker_setup(ctx)


def require_hosts(ctx: Context) -> None:
    if not ctx.hosts:
        raise ShipyardError("no hosts match the given -h/-r/-p filters")
