"""Service and target options, their validation, and their state-file JSON shape.

Shared by the CLI (client-side validation) and the server (validation again, and the
state file), so it only imports the standard library.  Field names follow kamal-proxy's
state file so an existing ``kamal-proxy-config`` volume can be restored; durations are
integer nanoseconds as in Go.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .godur import SECOND

VALIDATION_PREFIX = "service options invalid: "

ACME_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Another ACME CA for `deploy` (a private one, or a test server); --tls-staging wins.
ACME_DIRECTORY_ENV = "SHIPYARD_PROXY_ACME_DIRECTORY"

DEFAULT_HEALTH_CHECK_PATH = "/up"
DEFAULT_HEALTH_CHECK_INTERVAL = 1 * SECOND
DEFAULT_HEALTH_CHECK_TIMEOUT = 5 * SECOND
DEFAULT_TARGET_TIMEOUT = 30 * SECOND
DEFAULT_DEPLOY_TIMEOUT = 30 * SECOND
DEFAULT_DRAIN_TIMEOUT = 30 * SECOND
DEFAULT_PAUSE_TIMEOUT = 30 * SECOND
DEFAULT_WRITER_AFFINITY_TIMEOUT = 1 * SECOND
DEFAULT_BUFFER_MEMORY = 1 << 20

_TARGET_PATTERN = re.compile(r"^(\w[-_.\w+]+)(:\d+)?$")


@dataclass
class HealthCheckConfig:
    path: str = DEFAULT_HEALTH_CHECK_PATH
    port: int = 0
    interval: int = DEFAULT_HEALTH_CHECK_INTERVAL
    timeout: int = DEFAULT_HEALTH_CHECK_TIMEOUT
    host: str = ""


@dataclass
class ServiceOptions:
    hosts: list[str] = field(default_factory=list)
    path_prefixes: list[str] = field(default_factory=list)
    tls_enabled: bool = False
    tls_certificate_path: str = ""
    tls_private_key_path: str = ""
    tls_on_demand_url: str = ""
    tls_redirect: bool = True
    canonical_host: str = ""
    acme_directory: str = ""
    acme_cache_path: str = ""
    error_page_path: str = ""
    strip_prefix: bool = True
    writer_affinity_timeout: int = DEFAULT_WRITER_AFFINITY_TIMEOUT
    read_targets_accept_websockets: bool = False
    exclude_metrics_paths: list[str] = field(default_factory=list)
    client_ip_header: str = ""

    def has_configured_hosts(self) -> bool:
        """False when there are no hosts or any of them is empty (kamal-proxy's rule)."""
        return bool(self.hosts) and "" not in self.hosts

    def normalised(self) -> ServiceOptions:
        """Hosts as given; prefixes as ``"/" + trim(p, "/")``, defaulting to ``["/"]``."""
        prefixes = [normalise_prefix(p) for p in self.path_prefixes] or ["/"]
        copy = ServiceOptions(**{f.name: getattr(self, f.name) for f in fields(self)})
        copy.path_prefixes = list(dict.fromkeys(prefixes))
        copy.hosts = list(dict.fromkeys(self.hosts))
        return copy

    def uses_automatic_tls(self) -> bool:
        return self.tls_enabled and not self.tls_certificate_path


@dataclass
class TargetOptions:
    health_check_config: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    response_timeout: int = DEFAULT_TARGET_TIMEOUT
    buffer_requests: bool = False
    buffer_responses: bool = False
    max_memory_buffer_size: int = DEFAULT_BUFFER_MEMORY
    max_request_body_size: int = 0
    max_response_body_size: int = 0
    log_request_headers: list[str] = field(default_factory=list)
    log_response_headers: list[str] = field(default_factory=list)
    forward_headers: bool = False
    scope_cookie_paths: bool = False


def normalise_prefix(prefix: str) -> str:
    return "/" + prefix.strip("/")


def validate_service_options(options: ServiceOptions) -> str | None:
    """kamal-proxy's ``ServiceOptions.Validate``; returns the full message or None."""
    problem = _first_problem(options)
    return None if problem is None else VALIDATION_PREFIX + problem


def _first_problem(options: ServiceOptions) -> str | None:
    if options.tls_on_demand_url:
        if not options.tls_enabled:
            return "TLS must be enabled to use a TLS on-demand URL"
        if options.hosts and any(h != "" for h in options.hosts):
            return "cannot set hosts when using a TLS on-demand URL"
        if options.tls_certificate_path or options.tls_private_key_path:
            return "cannot use a custom TLS certificate with a TLS on-demand URL"
        if options.canonical_host:
            return "cannot set a canonical host when using a TLS on-demand URL"
        url_problem = validate_on_demand_url(options.tls_on_demand_url)
        if url_problem:
            return url_problem
    elif options.tls_enabled and not options.has_configured_hosts():
        return "host must be set when using TLS"
    if options.tls_enabled:
        prefixes = [normalise_prefix(p) for p in options.path_prefixes] or ["/"]
        if "/" not in prefixes:
            return "TLS settings must be specified on the root path service"
    if options.canonical_host and options.hosts and options.canonical_host not in options.hosts:
        return (
            f"canonical-host '{options.canonical_host}' must be present in the hosts list: "
            f"[{' '.join(options.hosts)}]"
        )
    return None


def validate_on_demand_url(url: str) -> str | None:
    if url.startswith("//"):
        return "tls-on-demand-url must be a path or an absolute http(s) URL"
    if url.startswith("/"):
        return None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"unable to parse tls-on-demand-url: {exc}"
    if not parts.scheme:
        return f'unable to parse tls-on-demand-url: parse "{url}": missing protocol scheme'
    if parts.scheme not in ("http", "https"):
        return f'unsupported scheme "{parts.scheme}" in tls-on-demand-url'
    if not parts.netloc:
        return "missing host in tls-on-demand-url"
    return None


def validate_target(target: str) -> str | None:
    """kamal-proxy's target regex; the odd spacing of the message is theirs."""
    if _TARGET_PATTERN.match(target) is None:
        return f"{target} :invalid host pattern"
    return None


# --- JSON (state file and RPC) ------------------------------------------------------------


def service_options_to_json(options: ServiceOptions) -> dict[str, Any]:
    return asdict(options)


def target_options_to_json(options: TargetOptions) -> dict[str, Any]:
    return asdict(options)


def _pick(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    """Keep the known keys whose JSON type matches the field default's type."""
    known = {f.name: f for f in fields(cls)}
    picked: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known or value is None:
            continue
        picked[key] = value
    return picked


def _check_types(instance: Any) -> None:
    template = type(instance)()
    for f in fields(instance):
        value = getattr(instance, f.name)
        expected = getattr(template, f.name)
        if isinstance(expected, bool):
            ok = isinstance(value, bool)
        elif isinstance(expected, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(expected, str):
            ok = isinstance(value, str)
        elif isinstance(expected, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = True
        if not ok:
            raise ValueError(f"invalid value for {f.name}: {value!r}")


def service_options_from_json(data: Any) -> ServiceOptions:
    if not isinstance(data, dict):
        raise ValueError("service options must be an object")
    options = ServiceOptions(**_pick(ServiceOptions, data))
    _check_types(options)
    return options


def target_options_from_json(data: Any) -> TargetOptions:
    if not isinstance(data, dict):
        raise ValueError("target options must be an object")
    picked = _pick(TargetOptions, data)
    health = picked.pop("health_check_config", {})
    if not isinstance(health, dict):
        raise ValueError("health_check_config must be an object")
    health_config = HealthCheckConfig(**_pick(HealthCheckConfig, health))
    _check_types(health_config)
    options = TargetOptions(health_check_config=health_config, **picked)
    _check_types(options)
    return options
