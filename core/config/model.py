"""The resolved configuration: roles, hosts and names, as the rest of shipyard needs them.

:class:`Config` wraps the validated schema and answers the questions every command asks
(which roles, in which order, which hosts, what is the primary host, what is the image
called) in one place, following Kamal's rules.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.core.config.schema import (
    AccessoryConfig,
    DeployConfig,
    EnvConfig,
    LoggingConfig,
    ProxyConfig,
    RoleConfig,
)

DEFAULT_REGISTRY = "docker.io"


@dataclass(frozen=True)
class HostSpec:
    name: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Env:
    """Env for one role: clear values, and secrets as (variable, secret name) pairs."""

    clear: dict[str, str] = field(default_factory=dict)
    secrets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Role:
    name: str
    hosts: tuple[HostSpec, ...]
    cmd: str | None
    options: dict[str, Any]
    env: Env
    proxy: ProxyConfig | None  # the root proxy merged with the role's; None = not proxied
    labels: dict[str, str]
    logging: LoggingConfig
    asset_path: str | None
    stop_timeout: int | None

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def proxied(self) -> bool:
        return self.proxy is not None


def _stringify(values: dict[str, Any]) -> dict[str, str]:
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in values.items()}


def _secret_pairs(names: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for entry in names:
        variable, _, secret = entry.partition(":")
        pairs.append((variable, secret or variable))
    return tuple(pairs)


def _merge_env(*envs: EnvConfig | None) -> Env:
    clear: dict[str, str] = {}
    secrets: list[tuple[str, str]] = []
    for env in envs:
        if env is None:
            continue
        clear.update(_stringify(env.clear))
        secrets.extend(_secret_pairs(env.secret))
    return Env(clear=clear, secrets=tuple(dict(secrets).items()))


def _host_entries(entries: list[str | dict[str, str | list[str]]]) -> tuple[HostSpec, ...]:
    hosts = []
    for entry in entries:
        if isinstance(entry, str):
            hosts.append(HostSpec(entry))
            continue
        for name, tags in entry.items():
            hosts.append(HostSpec(name, tuple([tags] if isinstance(tags, str) else tags)))
    return tuple(hosts)


class Config:
    """The merged, validated ``deploy.yml`` (plus destination file) of one project."""

    def __init__(
        self,
        schema: DeployConfig,
        *,
        data: dict[str, Any],
        project_dir: Path,
        files: list[Path],
        destination: str | None,
        state_dir: Path,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        self.schema = schema
        self.data = data  # the merged YAML data, for `shipyard config`
        self.project_dir = project_dir
        self.files = files
        self.destination = destination
        self.state_dir = state_dir  # `.shipyard`, or `.kamal` for an unconverted Kamal project
        # Top-level `x-` keys: ignored by Kamal and by our schema, so plugins keep their own
        # settings there (`x-shipyard: {broadcast: ...}`) and validate them themselves.
        self.extensions = dict(extensions or {})
        self.roles = self._resolve_roles()

    # -- names --------------------------------------------------------------------------

    @property
    def service(self) -> str:
        return self.schema.service

    @property
    def service_and_destination(self) -> str:
        """``<service>[-<dest>]``: names the lock, the audit log and the app directory."""
        return f"{self.service}-{self.destination}" if self.destination else self.service

    @property
    def image(self) -> str:
        return self.schema.image or self.service

    @property
    def repository(self) -> str:
        server = self.schema.registry.server
        return f"{server}/{self.image}" if server and server != DEFAULT_REGISTRY else self.image

    def image_ref(self, version: str) -> str:
        return f"{self.repository}:{version}"

    @property
    def latest_tag(self) -> str:
        return f"latest-{self.destination}" if self.destination else "latest"

    def container_prefix(self, role: str) -> str:
        """``<service>-<role>[-<dest>]``: container name prefix and proxy service name."""
        return "-".join(p for p in (self.service, role, self.destination) if p)

    def container_name(self, role: str, version: str) -> str:
        return f"{self.container_prefix(role)}-{version}"

    def plugin_settings(self, name: str) -> Any:
        """The ``x-shipyard.<name>`` block of the config, or None."""
        block = self.extensions.get("x-shipyard")
        return block.get(name) if isinstance(block, dict) else None

    # -- roles and hosts ----------------------------------------------------------------

    def _resolve_roles(self) -> list[Role]:
        servers = self.schema.servers
        if servers is None:
            role_map: dict[str, RoleConfig | list[Any]] = {}
        elif isinstance(servers, list):
            role_map = {"web": servers}
        else:
            role_map = dict(servers)
        primary = self.schema.primary_role
        order = sorted(role_map, key=lambda name: (name != primary, name))
        return [self._role(name, role_map[name]) for name in order]

    def _role(self, name: str, entry: RoleConfig | list[Any]) -> Role:
        spec = entry if isinstance(entry, RoleConfig) else RoleConfig(hosts=entry)
        root = self.schema
        logging = LoggingConfig(
            driver=(spec.logging.driver if spec.logging and spec.logging.driver else root.logging.driver),
            options={**root.logging.options, **(spec.logging.options if spec.logging else {})},
        )
        return Role(
            name=name,
            hosts=_host_entries(spec.hosts),
            cmd=spec.cmd,
            options=dict(spec.options),
            env=_merge_env(root.env, spec.env),
            proxy=self._role_proxy(name, spec),
            labels=_stringify({**root.labels, **spec.labels}),
            logging=logging,
            asset_path=spec.asset_path or root.asset_path,
            stop_timeout=spec.stop_timeout if spec.stop_timeout is not None else root.stop_timeout,
        )

    def _role_proxy(self, name: str, spec: RoleConfig) -> ProxyConfig | None:
        """Kamal: the primary role is proxied unless ``proxy: false``; other roles only
        with ``proxy: true`` or a map, which is deep-merged over the root ``proxy``."""
        setting = spec.proxy
        if setting is False or (setting is None and name != self.schema.primary_role):
            return None
        root = self.schema.proxy.model_dump(exclude_unset=True)
        if isinstance(setting, ProxyConfig):
            from shipyard.core.config.yamlmap import deep_merge

            merged = deep_merge(root, setting.model_dump(exclude_unset=True))
            return ProxyConfig.model_validate(merged)
        return self.schema.proxy

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(name)

    @property
    def primary_role(self) -> Role:
        return self.role(self.schema.primary_role)

    @property
    def primary_host(self) -> str:
        return self.primary_role.hosts[0].name

    @property
    def app_hosts(self) -> list[str]:
        """Every host running a role, primary-role hosts first (Kamal's order)."""
        return list(dict.fromkeys(h for role in self.roles for h in role.host_names))

    def host_tags(self, host: str) -> tuple[str, ...]:
        tags: list[str] = []
        for role in self.roles:
            for spec in role.hosts:
                if spec.name == host:
                    tags.extend(spec.tags)
        return tuple(dict.fromkeys(tags))

    def accessory_hosts(self, accessory: AccessoryConfig) -> list[str]:
        if accessory.host:
            return [accessory.host]
        if accessory.hosts:
            return list(accessory.hosts)
        roles = [accessory.role] if accessory.role else (accessory.roles or [])
        if roles:
            return list(dict.fromkeys(h for r in roles for h in self.role(r).host_names))
        tags = [accessory.tag] if accessory.tag else (accessory.tags or [])
        return [h for h in self.app_hosts if set(self.host_tags(h)) & set(tags)]

    @property
    def all_hosts(self) -> list[str]:
        hosts = self.app_hosts
        for accessory in self.schema.accessories.values():
            hosts += self.accessory_hosts(accessory)
        return list(dict.fromkeys(hosts))

    def select(
        self, *, hosts: tuple[str, ...] = (), roles: tuple[str, ...] = (), primary: bool = False
    ) -> tuple[list[Role], list[str]]:
        """Roles and hosts in play after ``-r``, ``-h`` and ``-p`` (``*`` wildcards)."""
        chosen_roles = [r for r in self.roles if not roles or any(fnmatch.fnmatchcase(r.name, p) for p in roles)]
        chosen_hosts = [h for r in chosen_roles for h in r.host_names]
        if not self.roles and not roles:
            chosen_hosts = self.all_hosts
        if hosts:
            chosen_hosts = [h for h in chosen_hosts if any(fnmatch.fnmatchcase(h, p) for p in hosts)]
        if primary:
            chosen_hosts = [self.primary_host] if self.primary_host in chosen_hosts else chosen_hosts[:1]
        chosen_hosts = list(dict.fromkeys(chosen_hosts))
        chosen_roles = [r for r in chosen_roles if set(r.host_names) & set(chosen_hosts)] or (
            chosen_roles if not chosen_hosts else []
        )
        return chosen_roles, chosen_hosts

    # -- paths on the hosts (relative to the SSH user's home) --------------------------------

    @property
    def run_directory(self) -> str:
        """``.shipyard`` (``.kamal`` for an unconverted Kamal project, so its lock and audit
        log stay where Kamal keeps them)."""
        return self.state_dir.name

    @property
    def audit_log(self) -> str:
        return f"{self.run_directory}/{self.service_and_destination}-audit.log"

    # -- paths on the deployer ------------------------------------------------------------

    @property
    def hooks_dir(self) -> Path:
        return self.project_dir / (self.schema.hooks_path or f"{self.state_dir.name}/hooks")

    @property
    def secrets_path(self) -> Path:
        return self.project_dir / (self.schema.secrets_path or f"{self.state_dir.name}/secrets")
