"""Kamal's cross-field configuration rules.

Each rule yields ``(key path, message)``; the loader adds file and line. Messages say
what to do, not just what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from shipyard.core.config.schema import DeployConfig, ProxyConfig, RoleConfig
from shipyard.core.config.yamlmap import KeyPath

Problem = tuple[KeyPath, str]
RESERVED_LABELS = ("service", "role", "destination")
NAME = re.compile(r"^[a-z0-9_-]+$")


def cross_field_problems(config: DeployConfig, destination: str | None, known_commands: frozenset[str]) -> list[Problem]:
    problems: list[Problem] = []
    for rule in (_destination, _image, _servers, _roles, _labels, _ssl, _accessories, _aliases, _version):
        problems.extend(rule(config, destination, known_commands))
    return problems


def _destination(config: DeployConfig, destination: str | None, _: frozenset[str]) -> Iterator[Problem]:
    if config.require_destination and not destination:
        yield ("require_destination",), "is true, so pass a destination with -d NAME"


def _image(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    if not config.image and not config.registry.is_local:
        yield ("image",), "is required (unless registry.server is a local registry, localhost:PORT)"


def _role_entries(config: DeployConfig) -> dict[str, RoleConfig | list[Any]]:
    if config.servers is None:
        return {}
    if isinstance(config.servers, list):
        return {"web": config.servers}
    return dict(config.servers)


def _hosts_of(entry: RoleConfig | list[Any]) -> list[Any]:
    return entry.hosts if isinstance(entry, RoleConfig) else entry


def _host_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else next(iter(entry), "")


def _servers(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    roles = _role_entries(config)
    if config.servers is None:
        if not config.accessories:
            yield ("servers",), "is required: list the hosts to deploy to (or define accessories)"
        return
    if not roles:
        yield ("servers",), "lists no hosts; add at least one host"
        return
    if config.primary_role not in roles:
        yield ("primary_role",), (
            f"role `{config.primary_role}` is not defined in servers (roles: {', '.join(sorted(roles))})"
        )
    elif not _hosts_of(roles[config.primary_role]):
        yield _role_path(config, config.primary_role), "the primary role needs at least one host"


def _role_path(config: DeployConfig, role: str) -> KeyPath:
    return ("servers",) if isinstance(config.servers, list) else ("servers", role)


def _roles(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    for name, entry in _role_entries(config).items():
        path = _role_path(config, name)
        if not NAME.match(name):
            yield path, "role names may contain only lower-case letters, digits, `-` and `_`"
        hosts = _hosts_of(entry)
        if not hosts and name != config.primary_role and not config.allow_empty_roles:
            yield path, "has no hosts (add hosts, or set allow_empty_roles: true)"
        seen: set[str] = set()
        for index, host in enumerate(hosts):
            host_name = _host_name(host)
            host_path = (*path, "hosts", index) if isinstance(entry, RoleConfig) else (*path, index)
            if isinstance(host, dict) and len(host) != 1:
                yield host_path, "a tagged host is a single `host: tag` pair"
            if not host_name.strip():
                yield host_path, "host name is empty"
            elif host_name in seen:
                yield host_path, f"host {host_name} is listed twice in this role"
            seen.add(host_name)
        if isinstance(entry, RoleConfig) and entry.env and entry.env.tags:
            yield (*path, "env", "tags"), "env tags are allowed only in the root env"


def _labels(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    scopes: list[tuple[KeyPath, dict[str, Any]]] = [(("labels",), config.labels)]
    for name, entry in _role_entries(config).items():
        if isinstance(entry, RoleConfig):
            scopes.append(((*_role_path(config, name), "labels"), entry.labels))
    for path, labels in scopes:
        for reserved in RESERVED_LABELS:
            if reserved in labels:
                yield (*path, reserved), f"`{reserved}` is a reserved label set by shipyard; choose another name"


def _ssl(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    domains: dict[str, str] = {}
    for name, entry in _role_entries(config).items():
        proxy = _effective_proxy(config, name, entry)
        if proxy is None or proxy.ssl is not True:
            continue
        path: KeyPath = (*_role_path(config, name), "proxy", "ssl") if _role_has_proxy_map(entry) else ("proxy", "ssl")
        hosts = _hosts_of(entry)
        if len(hosts) > 1:
            yield path, (
                f"Let's Encrypt (ssl: true) needs a single host, but role `{name}` has {len(hosts)}; "
                "use custom certificates or a load balancer"
            )
        for domain in proxy.host_names:
            if domain in domains:
                yield path, f"domain {domain} is already used by the SSL role `{domains[domain]}`"
            domains[domain] = name


def _role_has_proxy_map(entry: RoleConfig | list[Any]) -> bool:
    return isinstance(entry, RoleConfig) and isinstance(entry.proxy, ProxyConfig)


def _effective_proxy(config: DeployConfig, name: str, entry: RoleConfig | list[Any]) -> ProxyConfig | None:
    setting = entry.proxy if isinstance(entry, RoleConfig) else None
    if setting is False or (setting is None and name != config.primary_role):
        return None
    return setting if isinstance(setting, ProxyConfig) else config.proxy


def _accessories(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    roles = _role_entries(config)
    for name, accessory in config.accessories.items():
        for role in [accessory.role] if accessory.role else accessory.roles or []:
            if role not in roles:
                yield ("accessories", name, "role" if accessory.role else "roles"), f"role `{role}` is not defined in servers"


def _aliases(config: DeployConfig, _: str | None, known_commands: frozenset[str]) -> Iterator[Problem]:
    for name in config.aliases:
        if not NAME.match(name):
            yield ("aliases", name), "alias names may contain only lower-case letters, digits, `-` and `_`"
        elif name in known_commands:
            yield ("aliases", name), f"`{name}` is a built-in command; choose another alias name"


def _version(config: DeployConfig, *_: Any) -> Iterator[Problem]:
    if not config.minimum_version:
        return
    from shipyard.core import __version__

    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:3])

    if not re.match(r"^v?\d+(\.\d+){0,2}$", config.minimum_version):
        yield ("minimum_version",), f"expected a version such as 0.2.0, got {config.minimum_version!r}"
    elif parts(config.minimum_version) > parts(__version__):
        yield ("minimum_version",), (
            f"this project needs shipyard {config.minimum_version} or newer; you have {__version__} (upgrade shipyard)"
        )
