"""The deploy lifecycle, as pluggy hook specifications.

This module is the one place to learn what shipyard does and in which order. Every
capability, built-in or third-party, is a plugin implementing some of these hooks with
``@shipyard.core.hookimpl``. Hook names carry the ``shipyard_`` prefix; the shell-hook
name is the rest with ``-`` for ``_`` (``shipyard_pre_deploy`` → ``.shipyard/hooks/pre-deploy``).

Three kinds of hook, and every docstring says which one it is:

* **Event** hooks (``pre_*``, ``post_*``, ``*_failed``) tell every plugin that something is
  about to happen or has happened. Return value ignored unless stated. Raising
  :class:`~shipyard.core.errors.HookAbort` (or any exception) aborts the command; the
  core names the hook and plugin in the error.
* **Step** hooks (``firstresult``) perform one step of a protocol. The built-in default is
  registered ``trylast``; a plugin replaces the step by returning a non-None value.
  "Stops at first non-None result."
* **Setup** hooks wire plugins into the program (hookspecs, CLI commands, configure).

Every hook receives one :class:`~shipyard.core.context.Context` as ``ctx`` (config,
version, destination, hosts and roles in play, performer, start time, output, the
connection pool) plus a few event-specific arguments. Implementations may accept any
subset of the arguments, so new arguments can be added without breaking plugins.

The order in which a ``shipyard deploy`` fires them (Kamal's order)::

    pre_command
    pre_connect                  once, before the build or the first SSH connection
    pre_build → build → push → post_push
    (pull on every host)
    [lock acquired]
    pre_deploy                   CI checks veto here, before any server changes
    pre_proxy_reboot/post_proxy_reboot only around `proxy reboot`; deploy boots the proxy
    boot_plan                    groups of hosts for the rolling boot
      for each group:
        pre_app_boot(hosts=group)
        boot_container(host, role)  → switch_traffic(host, role, boot)   per host and role
        post_app_boot(hosts=group)
    prune(host)                  per host
    [lock released]
    post_deploy(runtime)         the broadcast point
    deploy_failed(error)         instead of post_deploy when any step above failed
    post_command(outcome)        always, also on failure

``shipyard_audit`` receives every recorded action along the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from shipyard.core.context import Context
    from shipyard.core.records import (
        AuditEvent,
        BootResult,
        BuildResult,
        CommandOutcome,
        PruneResult,
        PushResult,
        Veto,
    )
    from shipyard.core.secrets import SecretsAdapter
    from shipyard.core.transport import Transport

PROJECT = "shipyard"
hookspec = pluggy.HookspecMarker(PROJECT)

#: Event hooks that the shell-hooks bridge maps to executable scripts, in lifecycle order.
#: Kamal's nine hooks keep their names; ``post-push`` and ``deploy-failed`` are ours.
LIFECYCLE_EVENTS: tuple[str, ...] = (
    "pre_connect",
    "pre_build",
    "post_push",
    "pre_deploy",
    "pre_app_boot",
    "post_app_boot",
    "post_deploy",
    "deploy_failed",
    "pre_proxy_reboot",
    "post_proxy_reboot",
    "docker_setup",
)


def shell_hook_name(event: str) -> str:
    """``pre_deploy`` → ``pre-deploy``: the file name a shell hook uses."""
    return event.replace("_", "-")


# ---------------------------------------------------------------------------------------
# Setup: wiring plugins into the program
# ---------------------------------------------------------------------------------------


@hookspec(historic=True)
def shipyard_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Register hookspecs of your own, so plugins can extend other plugins.

    Called once when a plugin is registered (historic: late plugins see it too).
    ``pluginmanager`` is the manager; call ``pluginmanager.add_hookspecs(module)``.
    Return value ignored. This hook is incompatible with hook wrappers.
    """


@hookspec
def shipyard_commands(cli: click.Group) -> None:
    """Add CLI commands: ``cli.add_command(my_command)``.

    Called when the command line is built, before arguments are parsed, for every
    invocation that needs a command not built in (and for ``--help``). ``cli`` is the
    top-level ``shipyard`` group. Keep imports inside your command bodies so start-up
    stays fast. A name that clashes with a built-in command is an error.
    Return value ignored.
    """


@hookspec
def shipyard_configure(ctx: Context) -> None:
    """The context for this invocation is ready; set up per-run state.

    Called once per command invocation, after plugins are loaded and before
    ``shipyard_pre_command``. ``ctx.config`` loads the config lazily on first access, so a
    plugin that does not need it costs nothing. Return value ignored.
    """


@hookspec
def shipyard_unconfigure(ctx: Context) -> None:
    """The invocation is over (after ``shipyard_post_command``); release per-run state
    and finish any background work here: the ``shipyard`` process ends right after, with
    ``os._exit`` (no ``atexit`` handlers run).

    Called even when the command failed. Exceptions are reported but do not change the
    exit code. Return value ignored.
    """


# ---------------------------------------------------------------------------------------
# Every command
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_pre_command(ctx: Context) -> None:
    """A command is about to run. ``ctx.command`` / ``ctx.subcommand`` say which
    (``app``/``boot``, or ``deploy``/None).

    Raising aborts the command before it does anything. Return value ignored.
    """


@hookspec
def shipyard_post_command(ctx: Context, outcome: CommandOutcome) -> None:
    """A command has finished, successfully or not.

    ``outcome`` holds the exit code, the error (None on success) and the runtime in
    seconds. Called on failure too. Exceptions are reported but do not change the exit
    code. Return value ignored.
    """


# ---------------------------------------------------------------------------------------
# Connect
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_pre_connect(ctx: Context) -> None:
    """Runs once per process, before the first connection to any host, or before the
    build when a command builds (Kamal's ``pre-connect``: warm DNS, open a VPN...).

    Raising aborts the command; nothing has been changed on any host. Return value
    ignored. The shell bridge passes the secrets in this hook's environment.
    """


@hookspec(firstresult=True)
def shipyard_transport(ctx: Context, host: str) -> Transport | None:
    """Return the :class:`~shipyard.core.transport.Transport` for ``host``.

    Called once per host per run, by the connection pool on first use; the transport is
    then reused for every command on that host. Built-ins: ``local`` answers for
    ``localhost``; ``ssh`` (trylast) answers for everything else. Return None to let
    another plugin answer. Raise a :class:`~shipyard.core.errors.HostError` if the host
    cannot be reached. Stops at first non-None result.
    """


# ---------------------------------------------------------------------------------------
# Build and push (on the deployer)
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_pre_build(ctx: Context) -> None:
    """Runs before the image is built (``build push``, ``deploy`` without ``-P``), after
    the local docker and registry checks.

    Raising aborts before anything is built or pushed. Return value ignored.
    """


@hookspec(firstresult=True)
def shipyard_build(ctx: Context) -> BuildResult | None:
    """Build the app image for ``ctx.version`` and tag it ``:VERSION`` and
    ``:latest[-DEST]``.

    The built-in ``docker_build`` plugin (trylast) uses the local Docker engine. Return a
    :class:`~shipyard.core.records.BuildResult`; raise to fail the build (the error shows
    the failing step). Stops at first non-None result.
    """


@hookspec(firstresult=True)
def shipyard_push(ctx: Context, build: BuildResult) -> PushResult | None:
    """Push the built image to the registry, showing progress.

    ``build`` is what ``shipyard_build`` returned. Return a
    :class:`~shipyard.core.records.PushResult`. Stops at first non-None result.
    """


@hookspec
def shipyard_post_push(ctx: Context, push: PushResult) -> None:
    """The image is in the registry and nothing has changed on any server yet.

    A good place to scan or sign the image. Raising aborts before the hosts pull.
    Return value ignored.
    """


# ---------------------------------------------------------------------------------------
# Deploy (under the deploy lock)
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_pre_deploy(ctx: Context) -> Veto | None:
    """The lock is held and nothing on any server has changed yet: the place for CI
    checks and approvals. Runs for ``deploy``, ``redeploy`` and ``rollback``.

    Return a :class:`~shipyard.core.records.Veto` (or raise
    :class:`~shipyard.core.errors.HookAbort`) to stop the deploy; the lock is released and
    the command exits 1 with the reason. Return None to allow it. All implementations run
    until one vetoes.
    """


@hookspec(firstresult=True)
def shipyard_boot_plan(ctx: Context, hosts: list[str]) -> list[list[str]] | None:
    """Split ``hosts`` (the app hosts, primary role first) into the groups of the rolling
    boot. Groups boot one after another; hosts within a group boot in parallel.

    The built-in ``rolling_boot`` plugin (trylast) honours ``boot.limit`` (a number or
    ``"N%"``). Stops at first non-None result.
    """


@hookspec
def shipyard_pre_app_boot(ctx: Context, hosts: list[str]) -> None:
    """A boot group is about to start; ``hosts`` is that group.

    Raising aborts the boot; groups already booted stay on the new version (as in
    Kamal). Return value ignored.
    """


@hookspec(firstresult=True)
def shipyard_boot_container(ctx: Context, host: str, role: str) -> BootResult | None:
    """Boot the new version's container for ``role`` on ``host``, switch traffic to it,
    and stop the old one.

    The built-in step renames a clashing container, uploads the role's env file (0600),
    runs the container, calls ``shipyard_switch_traffic`` (proxied roles) or waits for
    readiness, then stops the previous container. On failure it stops the new container,
    leaves the old one serving and raises. Stops at first non-None result.
    """


@hookspec(firstresult=True)
def shipyard_switch_traffic(ctx: Context, host: str, role: str, boot: BootResult) -> bool | None:
    """Point the proxy on ``host`` at the freshly booted container in ``boot`` once it is
    healthy, and drain the old one. Returns True when traffic has moved.

    The built-in ``proxy_switch`` plugin runs ``shipyard-proxy deploy`` inside the proxy
    container. Raise if the target never became healthy. Stops at first non-None result.
    """


@hookspec
def shipyard_post_app_boot(ctx: Context, hosts: list[str]) -> None:
    """A boot group has finished; ``hosts`` is that group. Raising aborts the remaining
    groups. Return value ignored.
    """


@hookspec(firstresult=True)
def shipyard_prune(ctx: Context, host: str) -> PruneResult | None:
    """Remove old stopped containers and unused images on ``host``, keeping
    ``retain_containers`` stopped containers and the images they use, and never the
    running version's image. Stops at first non-None result.
    """


@hookspec
def shipyard_post_deploy(ctx: Context, runtime: float) -> None:
    """The deploy (or redeploy or rollback) succeeded and the lock is released.

    ``runtime`` is the wall time in seconds. The broadcast point: notify chat, record
    metrics. Raising makes the command exit non-zero, but nothing is undone. Return value
    ignored. The shell bridge passes the secrets and ``SHIPYARD_RUNTIME``.
    """


@hookspec
def shipyard_deploy_failed(ctx: Context, error: BaseException) -> None:
    """A deploy, redeploy or rollback failed with ``error``; the lock has been released
    and the previous version keeps serving where the new one did not boot.

    Called before the error reaches the user. Return value ignored; raising here is
    reported but the original error wins.
    """


# ---------------------------------------------------------------------------------------
# Proxy and servers
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_pre_proxy_reboot(ctx: Context, hosts: list[str]) -> None:
    """The proxy on ``hosts`` is about to be rebooted (``proxy reboot``; one host at a
    time with ``--rolling``). Raising aborts before the proxy stops. Return value ignored.
    """


@hookspec
def shipyard_post_proxy_reboot(ctx: Context, hosts: list[str]) -> None:
    """The proxy on ``hosts`` has been rebooted and is serving again (after each host with
    ``--rolling``). Raising makes the command fail, but the new proxy stays up. Return
    value ignored.
    """


@hookspec
def shipyard_docker_setup(ctx: Context) -> None:
    """``server bootstrap`` (and ``setup``) made sure Docker is installed on every host;
    configure it further here (registry mirrors, daemon settings). Raising aborts the
    command. Return value ignored.
    """


# ---------------------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------------------


@hookspec
def shipyard_audit(ctx: Context, event: AuditEvent) -> None:
    """Every recorded action passes through here: ``Booted app version V``, ``Pruned
    containers``... ``event`` says what, where, by whom and when.

    The built-in ``audit`` plugin appends it to ``.shipyard/<service>[-<dest>]-audit.log``
    on the hosts; broadcast plugins may forward it. Exceptions are reported as warnings
    and never stop the command. Return value ignored.
    """


# ---------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def shipyard_secrets_adapter(name: str) -> SecretsAdapter | None:
    """Return the secrets adapter called ``name`` (``shipyard secrets fetch -a NAME``), or
    None if this plugin does not provide it.

    An adapter has ``fetch(secrets: list[str], account: str | None, from_: str | None) ->
    dict[str, str]``. Stops at first non-None result.
    """


def _all_specs() -> dict[str, Any]:
    """Every hookspec in this module, by name (used by docs and meta-tests)."""
    return {name: value for name, value in globals().items() if name.startswith("shipyard_")}
