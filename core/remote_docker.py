"""The remote Docker layer: intentions → ``docker`` argument lists for a host.

Every function returns an argv list; the transport quotes it once. Nothing here runs a
command or builds a shell string, so any value from the config (an env value with
``$(...)``, a label with quotes) reaches Docker verbatim. Containers and images carry
Kamal's labels: ``service``, ``role`` and ``destination``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Argv = list[str]

NETWORK = "shipyard"  # the Docker network apps and the proxy share on each host
PROXY_CONTAINER = "shipyard-proxy"


def labels(service: str, role: str | None = None, destination: str | None = None) -> dict[str, str]:
    """Kamal's labels. ``destination`` is always present (empty without ``-d``), so a
    filter on it separates destinations exactly."""
    found = {"service": service}
    if role is not None:
        found["role"] = role
    found["destination"] = destination or ""
    return found


def label_filters(selected: Mapping[str, str]) -> Argv:
    args: Argv = []
    for key, value in selected.items():
        args += ["--filter", f"label={key}={value}"]
    return args


def option_args(options: Mapping[str, Any]) -> Argv:
    """Kamal's ``options:`` map → ``--key value`` flags; a list repeats the flag, ``true``
    or an empty value gives a bare flag."""
    args: Argv = []
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None or item is True or item == "":
                args.append(f"--{key}")
            elif item is not False:
                args.append(f"--{key}={item}")
    return args


def run(
    image: str,
    *,
    name: str,
    network: str | None = None,
    hostname: str | None = None,
    restart: str | None = "unless-stopped",
    env: Mapping[str, str] | None = None,
    env_files: Sequence[str] = (),
    volumes: Sequence[str] = (),
    publish: Sequence[str] = (),
    container_labels: Mapping[str, str] | None = None,
    log_driver: str | None = None,
    log_options: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    cmd: Sequence[str] = (),
    detach: bool = True,
) -> Argv:
    args: Argv = ["docker", "run"]
    if detach:
        args.append("--detach")
    if restart:
        args += ["--restart", restart]
    args += ["--name", name]
    if network:
        args += ["--network", network]
    if hostname:
        args += ["--hostname", hostname]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for path in env_files:
        args += ["--env-file", path]
    if log_driver:
        args += ["--log-driver", log_driver]
    for key, value in (log_options or {}).items():
        args += ["--log-opt", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    for port in publish:
        args += ["--publish", port]
    for key, value in (container_labels or {}).items():
        args += ["--label", f"{key}={value}"]
    args += option_args(options or {})
    return [*args, image, *cmd]


def ps(*, filters: Mapping[str, str] | None = None, name: str | None = None, all_states: bool = False,
       quiet: bool = False, fmt: str | None = None, statuses: Iterable[str] = ()) -> Argv:
    args: Argv = ["docker", "ps"]
    if all_states:
        args.append("--all")
    if quiet:
        args.append("--quiet")
    args += label_filters(filters or {})
    if name is not None:
        args += ["--filter", f"name=^{name}$"]
    for status in statuses:
        args += ["--filter", f"status={status}"]
    if fmt:
        args += ["--format", fmt]
    return args


def exec_(container: str, cmd: Sequence[str], *, interactive: bool = False, env: Mapping[str, str] | None = None) -> Argv:
    args: Argv = ["docker", "exec"]
    if interactive:
        args += ["--interactive", "--tty"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    return [*args, container, *cmd]


def pull(image: str) -> Argv:
    return ["docker", "pull", image]


def login(server: str, username: str) -> Argv:
    """The password goes on stdin (``--password-stdin``), never on the command line."""
    return ["docker", "login", server, "--username", username, "--password-stdin"]


def logout(server: str) -> Argv:
    return ["docker", "logout", server]


def inspect(target: str, fmt: str | None = None) -> Argv:
    return ["docker", "inspect", *(["--format", fmt] if fmt else []), target]


def start(*containers: str) -> Argv:
    return ["docker", "start", *containers]


def stop(*containers: str, timeout: int | None = None) -> Argv:
    return ["docker", "stop", *(["--time", str(timeout)] if timeout is not None else []), *containers]


def rm(*containers: str, force: bool = False) -> Argv:
    return ["docker", "rm", *(["--force"] if force else []), *containers]


def rename(old: str, new: str) -> Argv:
    return ["docker", "rename", old, new]


def tag(source: str, target: str) -> Argv:
    return ["docker", "tag", source, target]


def rmi(*images: str, force: bool = False) -> Argv:
    return ["docker", "image", "rm", *(["--force"] if force else []), *images]


def images(*, filters: Mapping[str, str] | None = None, repository: str | None = None, fmt: str | None = None,
           dangling: bool | None = None) -> Argv:
    args: Argv = ["docker", "image", "ls"]
    args += label_filters(filters or {})
    if dangling is not None:
        args += ["--filter", f"dangling={'true' if dangling else 'false'}"]
    if fmt:
        args += ["--format", fmt]
    if repository:
        args.append(repository)
    return args


def image_prune(*, filters: Mapping[str, str] | None = None, all_images: bool = False) -> Argv:
    return ["docker", "image", "prune", "--force", *(["--all"] if all_images else []), *label_filters(filters or {})]


def network_create(name: str) -> Argv:
    return ["docker", "network", "create", name]


def logs(container: str, *, since: str | None = None, tail: int | None = None, timestamps: bool = True,
         follow: bool = False) -> Argv:
    args: Argv = ["docker", "logs", container]
    if since:
        args += ["--since", since]
    if tail is not None:
        args += ["--tail", str(tail)]
    if timestamps:
        args.append("--timestamps")
    if follow:
        args.append("--follow")
    return args


def version() -> Argv:
    return ["docker", "version", "--format", "{{.Server.Version}}"]
