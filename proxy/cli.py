"""``shipyard-proxy`` (alias ``kamal-proxy`` in the image): kamal-proxy's command-line surface.

Only ``run`` imports the server (uvloop, httptools, prometheus-client); every other command
is a thin client of the control socket and imports nothing heavy, because Kamal runs them
through ``docker exec`` on every deploy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import client, paths
from .flags import (
    CLIError,
    Flag,
    FlagValue,
    HelpRequested,
    ParsedArgs,
    parse_flags,
    parse_go_bool,
    parse_go_int,
)
from .godur import SECOND
from .options import (
    ACME_DIRECTORY_ENV,
    ACME_STAGING_DIRECTORY,
    DEFAULT_BUFFER_MEMORY,
    HealthCheckConfig,
    ServiceOptions,
    TargetOptions,
    service_options_to_json,
    target_options_to_json,
    validate_service_options,
)

Runner = Callable[[ParsedArgs, str], int]


@dataclass
class Command:
    name: str
    short: str
    run: Runner | None = None
    flags: list[Flag] = field(default_factory=list)
    exact_args: int | None = None
    no_args: bool = False
    aliases: tuple[str, ...] = ()
    subcommands: list[Command] = field(default_factory=list)
    required_together: tuple[str, ...] = ()
    one_required: tuple[str, ...] = ()


# --- command implementations ----------------------------------------------------------------


def _call(method: str, params: dict[str, Any]) -> Any:
    return client.call(paths.socket_path(), method, params)


def run_server(args: ParsedArgs, prog: str) -> int:
    from .server import ServerConfig, serve  # heavy imports only for `run`

    config = ServerConfig(
        http_port=args.get_int("http-port"),
        https_port=args.get_int("https-port"),
        metrics_port=args.get_int("metrics-port"),
        debug=args.get_bool("debug"),
        http3=args.get_bool("http3"),
    )
    return serve(config)


def deploy(args: ParsedArgs, prog: str) -> int:
    for limit, buffering, what in (
        ("max-request-body", "buffer-requests", "request"),
        ("max-response-body", "buffer-responses", "response"),
    ):
        if limit in args.changed and buffering not in args.changed:
            raise CLIError(f"{limit} can only be set when {what} buffering is enabled")
    forward_headers = (
        args.get_bool("forward-headers")
        if "forward-headers" in args.changed
        else not args.get_bool("tls")
    )
    service_options = ServiceOptions(
        hosts=args.get_list("host"),
        path_prefixes=args.get_list("path-prefix"),
        tls_enabled=args.get_bool("tls"),
        tls_certificate_path=args.get_str("tls-certificate-path"),
        tls_private_key_path=args.get_str("tls-private-key-path"),
        tls_on_demand_url=args.get_str("tls-on-demand-url"),
        tls_redirect=args.get_bool("tls-redirect"),
        canonical_host=args.get_str("canonical-host"),
        acme_directory=ACME_STAGING_DIRECTORY
        if args.get_bool("tls-staging")
        else os.environ.get(ACME_DIRECTORY_ENV, ""),
        acme_cache_path=args.get_str("tls-acme-cache-path"),
        error_page_path=args.get_str("error-pages"),
        strip_prefix=args.get_bool("strip-path-prefix"),
        writer_affinity_timeout=args.get_int("writer-affinity-timeout"),
        read_targets_accept_websockets=args.get_bool("read-target-websockets"),
        exclude_metrics_paths=args.get_list("exclude-metrics-path"),
        client_ip_header=args.get_str("client-ip-header"),
    )
    target_options = TargetOptions(
        health_check_config=HealthCheckConfig(
            path=args.get_str("health-check-path"),
            port=args.get_int("health-check-port"),
            interval=args.get_int("health-check-interval"),
            timeout=args.get_int("health-check-timeout"),
            host=args.get_str("health-check-host"),
        ),
        response_timeout=args.get_int("target-timeout"),
        buffer_requests=args.get_bool("buffer-requests"),
        buffer_responses=args.get_bool("buffer-responses"),
        max_memory_buffer_size=args.get_int("buffer-memory"),
        max_request_body_size=args.get_int("max-request-body"),
        max_response_body_size=args.get_int("max-response-body"),
        log_request_headers=args.get_list("log-request-header"),
        log_response_headers=args.get_list("log-response-header"),
        forward_headers=forward_headers,
        scope_cookie_paths=args.get_bool("scope-cookie-paths"),
    )
    problem = validate_service_options(service_options)
    if problem:
        raise CLIError(problem)
    _call(
        "deploy",
        {
            "name": args.positionals[0],
            "targets": args.get_list("target"),
            "readers": args.get_list("read-target"),
            "deploy_timeout": args.get_int("deploy-timeout"),
            "drain_timeout": args.get_int("drain-timeout"),
            "force": args.get_bool("force"),
            "service_options": service_options_to_json(service_options),
            "target_options": target_options_to_json(target_options),
        },
    )
    return 0


def remove(args: ParsedArgs, prog: str) -> int:
    _call("remove", {"name": args.positionals[0]})
    return 0


def pause(args: ParsedArgs, prog: str) -> int:
    _call(
        "pause",
        {
            "name": args.positionals[0],
            "drain_timeout": args.get_int("drain-timeout"),
            "pause_timeout": args.get_int("max-pause"),
        },
    )
    return 0


def stop(args: ParsedArgs, prog: str) -> int:
    _call(
        "stop",
        {
            "name": args.positionals[0],
            "drain_timeout": args.get_int("drain-timeout"),
            "message": args.get_str("message"),
        },
    )
    return 0


def resume(args: ParsedArgs, prog: str) -> int:
    _call("resume", {"name": args.positionals[0]})
    return 0


def rollout_deploy(args: ParsedArgs, prog: str) -> int:
    _call(
        "rollout_deploy",
        {
            "name": args.positionals[0],
            "targets": args.get_list("target"),
            "readers": args.get_list("read-target"),
            "deploy_timeout": args.get_int("deploy-timeout"),
            "drain_timeout": args.get_int("drain-timeout"),
        },
    )
    return 0


def rollout_set(args: ParsedArgs, prog: str) -> int:
    _call(
        "rollout_set",
        {
            "name": args.positionals[0],
            "percent": args.get_int("percent"),
            "allowlist": args.get_list("list"),
        },
    )
    return 0


def rollout_stop(args: ParsedArgs, prog: str) -> int:
    _call("rollout_stop", {"name": args.positionals[0]})
    return 0


def list_services(args: ParsedArgs, prog: str) -> int:
    result = _call("list", {})
    services = result.get("targets", {}) if isinstance(result, dict) else {}
    rows = [["Service", "Host", "Path", "Target", "State", "TLS"]]
    for name in sorted(services):
        info = services[name]
        rows.append(
            [
                name,
                str(info.get("host", "")),
                str(info.get("path", "")),
                str(info.get("target", "")),
                str(info.get("state", "")),
                "yes" if info.get("tls") else "no",
            ]
        )
    sys.stdout.write(format_table(rows))
    return 0


def format_table(rows: list[list[str]]) -> str:
    """kamal-proxy's table: ANSI styles always, cells padded to the widest raw value + 2."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths.get(i, 0), len(cell))
    lines = []
    for rownum, row in enumerate(rows):
        parts = []
        for i, cell in enumerate(row):
            style = "3;94" if rownum == 0 else ("1;34" if i == 0 else "")
            parts.append(f"\033[{style}m{cell}\033[0m" + " " * (widths[i] - len(cell)) + "  ")
        lines.append("".join(parts) + "\n")
    return "".join(lines)


# --- command table --------------------------------------------------------------------------


def _d(seconds: int) -> int:
    return seconds * SECOND


DEPLOY_FLAGS = [
    Flag("target", "strings", [], "Target host(s) to deploy", required=True),
    Flag("read-target", "strings", [], "Read-only target host(s) to deploy"),
    Flag("host", "strings", [], "Host(s) to serve this target on (empty for wildcard)"),
    Flag("path-prefix", "strings", [], "Deploy the service below the specified path(s)"),
    Flag("strip-path-prefix", "bool", True, "With --path-prefix, strip prefix from request"),
    Flag("tls", "bool", False, "Configure TLS for this target (requires a non-empty host)"),
    Flag("tls-on-demand-url", "string", "", "URL to check before issuing an on-demand certificate"),
    Flag("tls-staging", "bool", False, "Use Let's Encrypt staging environment"),
    Flag("tls-certificate-path", "string", "", "Configure custom TLS certificate path"),
    Flag("tls-private-key-path", "string", "", "Configure custom TLS private key path"),
    Flag("tls-acme-cache-path", "string", "", "Location to store ACME certificates"),
    Flag("tls-redirect", "bool", True, "Redirect HTTP requests to HTTPS"),
    Flag("canonical-host", "string", "", "Redirect all requests to this host"),
    Flag("deploy-timeout", "duration", _d(30), "Maximum time to wait for the new target"),
    Flag("drain-timeout", "duration", _d(30), "How long to allow in-flight requests to complete"),
    Flag("force", "bool", False, "Skip waiting for the target to become healthy"),
    Flag("health-check-interval", "duration", _d(1), "Interval between health checks"),
    Flag("health-check-timeout", "duration", _d(5), "Time each health check must complete in"),
    Flag("health-check-path", "string", "/up", "Path to check for health"),
    Flag("health-check-port", "int", 0, "Port to check for health (0 = target port)"),
    Flag("health-check-host", "string", "", "Host header for health checks"),
    Flag(
        "writer-affinity-timeout", "duration", _d(1), "Time after a write to keep reads on writers"
    ),
    Flag("read-target-websockets", "bool", False, "Route WebSocket traffic to read targets"),
    Flag("target-timeout", "duration", _d(30), "Maximum time to wait for the target to respond"),
    Flag("buffer-requests", "bool", False, "Enable request buffering"),
    Flag("buffer-responses", "bool", False, "Enable response buffering"),
    Flag("buffer-memory", "int", DEFAULT_BUFFER_MEMORY, "Max size of memory buffer"),
    Flag("max-request-body", "int", 0, "Max size of request body when buffering (0 = unlimited)"),
    Flag("max-response-body", "int", 0, "Max size of response body when buffering (0 = unlimited)"),
    Flag("error-pages", "string", "", "Path to custom error pages"),
    Flag("log-request-header", "strings", [], "Additional request header to log"),
    Flag("log-response-header", "strings", [], "Additional response header to log"),
    Flag("exclude-metrics-path", "strings", [], "Paths to exclude from metrics"),
    Flag("forward-headers", "bool", False, "Forward X-Forwarded headers to target (default !tls)"),
    Flag("client-ip-header", "string", "", "Header containing the real client IP"),
    Flag("scope-cookie-paths", "bool", False, "Scope cookie paths to the path prefix"),
]

RUN_FLAGS = [
    Flag("debug", "bool", False, "Include debugging logs"),
    Flag("http-port", "int", 80, "Port to serve HTTP traffic on"),
    Flag("https-port", "int", 443, "Port to serve HTTPS traffic on"),
    Flag(
        "metrics-port", "int", 0, "Publish metrics on the specified port (default zero to disable)"
    ),
    Flag("http3", "bool", False, "Enable HTTP/3"),
]

RUN_ENV_KEYS = {
    "debug": "DEBUG",
    "http-port": "HTTP_PORT",
    "https-port": "HTTPS_PORT",
    "metrics-port": "METRICS_PORT",
}


def run_env_defaults(
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> dict[str, FlagValue]:
    """Env vars change only the defaults of ``run``'s flags.

    For key K the first *set* variable of ``SHIPYARD_PROXY_K``, ``KAMAL_PROXY_K`` and ``K``
    wins, even when its value is invalid; an invalid value leaves the built-in default.
    """
    env = os.environ if environ is None else environ
    defaults: dict[str, FlagValue] = {}
    for flag in RUN_FLAGS:
        key = RUN_ENV_KEYS.get(flag.name)
        if key is None:
            continue
        for name in (f"SHIPYARD_PROXY_{key}", f"KAMAL_PROXY_{key}", key):
            if name in env:
                raw = env[name]
                with contextlib.suppress(ValueError):  # invalid → keep the built-in default
                    defaults[flag.name] = (
                        parse_go_bool(raw) if flag.kind == "bool" else parse_go_int(raw)
                    )
                break
    return defaults


def build_commands() -> Command:
    drain = Flag(
        "drain-timeout", "duration", _d(30), "How long to allow in-flight requests to complete"
    )
    rollout = Command(
        "rollout",
        "Manage rollout deployments",
        subcommands=[
            Command(
                "deploy",
                "Deploy a target for rollout",
                rollout_deploy,
                [
                    Flag("target", "strings", [], "Target host(s) to deploy", required=True),
                    Flag("read-target", "strings", [], "Read-only target host(s) to deploy"),
                    Flag(
                        "deploy-timeout",
                        "duration",
                        _d(30),
                        "Maximum time to wait for the new target",
                    ),
                    drain,
                ],
                exact_args=1,
            ),
            Command(
                "set",
                "Set traffic split for rollout",
                rollout_set,
                [
                    Flag(
                        "percent", "int", 0, "Percentage of traffic to send to the rollout target"
                    ),
                    Flag(
                        "list", "strings", [], "Comma-separated list of values to route to rollout"
                    ),
                ],
                exact_args=1,
                one_required=("percent", "list"),
            ),
            Command("stop", "Stop the rollout", rollout_stop, exact_args=1),
        ],
    )
    return Command(
        "kamal-proxy",
        "HTTP proxy for zero downtime deployments",
        subcommands=[
            Command(
                "deploy",
                "Deploy a target host",
                deploy,
                DEPLOY_FLAGS,
                exact_args=1,
                required_together=("tls-certificate-path", "tls-private-key-path"),
            ),
            Command(
                "list",
                "List the services currently running",
                list_services,
                no_args=True,
                aliases=("ls",),
            ),
            Command(
                "pause",
                "Pause a service",
                pause,
                [drain, Flag("max-pause", "duration", _d(30), "How long to pause requests")],
                exact_args=1,
            ),
            Command("remove", "Remove the service", remove, exact_args=1, aliases=("rm",)),
            Command("resume", "Resume a service", resume, exact_args=1),
            rollout,
            Command("run", "Run the server", run_server, RUN_FLAGS),
            Command(
                "stop",
                "Stop a service",
                stop,
                [drain, Flag("message", "string", "", "Message to display to users while stopped")],
                exact_args=1,
            ),
        ],
    )


# --- dispatch -------------------------------------------------------------------------------


def _find(command: Command, argv: list[str]) -> tuple[Command, list[str], list[str]]:
    """Walk subcommands by the leading non-flag words, as cobra's Find does."""
    path = [command.name]
    rest = list(argv)
    current = command
    while current.subcommands:
        word_index = next((i for i, a in enumerate(rest) if not a.startswith("-")), None)
        if word_index is None:
            break
        word = rest[word_index]
        match = next((c for c in current.subcommands if word == c.name or word in c.aliases), None)
        if match is None:
            if word == "help" and current is command:
                return _help_target(command, rest[word_index + 1 :]), path, ["--help"]
            break
        rest.pop(word_index)
        current = match
        path.append(match.name)
    return current, path, rest


def _help_target(root: Command, words: list[str]) -> Command:
    current = root
    for word in words:
        match = next((c for c in current.subcommands if word == c.name or word in c.aliases), None)
        if match is None:
            break
        current = match
    return current


def usage(command: Command, path: list[str]) -> str:
    lines = [command.short, "", "Usage:"]
    name = " ".join(path)
    if command.subcommands:
        lines.append(f"  {name} [command]")
        lines += ["", "Available Commands:"]
        for sub in command.subcommands:
            lines.append(f"  {sub.name:<12} {sub.short}")
    else:
        arg = " <service>" if command.exact_args == 1 else ""
        lines.append(f"  {name}{arg} [flags]")
    if command.aliases:
        lines += ["", "Aliases:", "  " + ", ".join((command.name, *command.aliases))]
    lines += ["", "Flags:"]
    for flag in command.flags:
        kind = {"bool": "", "strings": " strings", "duration": " duration"}.get(
            flag.kind, f" {flag.kind}"
        )
        default = flag.default
        shown = ""
        if flag.kind == "duration" and isinstance(default, int) and default:
            from .godur import format_duration

            shown = f" (default {format_duration(default)})"
        elif default not in ("", 0, False, []) and not isinstance(default, list):
            shown = f" (default {str(default).lower() if isinstance(default, bool) else default})"
        lines.append(f"      --{flag.name}{kind:<12} {flag.usage}{shown}")
    lines.append(f"  -h, --help{'':<14} help for {command.name}")
    return "\n".join(lines) + "\n"


def execute(argv: Sequence[str], prog: str = "kamal-proxy") -> int:
    root = build_commands()
    root.name = prog
    command, path, rest = _find(root, list(argv))
    path[0] = prog
    if command.run is None:
        # Commands without an action (the root, `rollout`) print help on their own, and
        # reject unknown words like cobra does.
        words = [a for a in rest if not a.startswith("-")]
        if words:
            raise _UnknownCommand(f'unknown command "{words[0]}" for "{" ".join(path)}"', path)
        with contextlib.suppress(HelpRequested):
            parse_flags([], rest)
        sys.stdout.write(usage(command, path))
        return 0
    defaults = run_env_defaults() if command.run is run_server else None
    try:
        args = parse_flags(command.flags, rest, defaults)
    except HelpRequested:
        sys.stdout.write(usage(command, path))
        return 0
    if command.exact_args is not None and len(args.positionals) != command.exact_args:
        raise CLIError(f"accepts {command.exact_args} arg(s), received {len(args.positionals)}")
    if command.no_args and args.positionals:
        raise CLIError(f'unknown command "{args.positionals[0]}" for "{" ".join(path)}"')
    missing = [f.name for f in command.flags if f.required and f.name not in args.changed]
    if missing:
        raise CLIError("required flag(s) " + ", ".join(f'"{m}"' for m in missing) + " not set")
    if command.required_together:
        given = [n for n in command.required_together if n in args.changed]
        if given and len(given) != len(command.required_together):
            absent = [n for n in command.required_together if n not in args.changed]
            raise CLIError(
                f"if any flags in the group [{' '.join(command.required_together)}] are set they "
                f"must all be set; missing [{' '.join(absent)}]"
            )
    if command.one_required and not any(n in args.changed for n in command.one_required):
        raise CLIError(
            f"at least one of the flags in the group [{' '.join(command.one_required)}] is required"
        )
    return command.run(args, prog)


class _UnknownCommand(CLIError):
    def __init__(self, message: str, path: list[str]) -> None:
        super().__init__(message)
        self.path = path


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if argv is None and sys.argv and sys.argv[0] else ""
    if prog not in ("kamal-proxy", "shipyard-proxy"):
        prog = "shipyard-proxy"
    try:
        code = execute(arguments, prog)
    except _UnknownCommand as exc:
        sys.stderr.write(f"Error: {exc}\nRun '{' '.join(exc.path)} --help' for usage.\n")
        code = 1
    except CLIError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
