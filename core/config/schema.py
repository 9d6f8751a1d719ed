"""The schema of ``config/deploy.yml`` (Kamal 2's), as pydantic models.

Each field's ``description`` is also its documentation: ``shipyard docs`` is generated
from these models, so the reference cannot drift from what is validated. Unknown keys
are errors everywhere (``extra="forbid"``); top-level ``x-`` keys are dropped before
validation. Polymorphic keys (``servers`` as a list or a role map, a role as a list or a
map, ``ssl`` as a bool or a map...) use shape discriminators so an error names the key
path the user wrote, not a list of every union branch.
"""

from __future__ import annotations

import os
import re
import sys
import types
from typing import Annotated, Any, Literal

# pydantic scans every installed distribution for plugins of its own when it builds its
# first model; shipyard uses none, and the scan costs start-up time on every command.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
if os.environ["PYDANTIC_DISABLE_PLUGINS"] == "__all__" and "pydantic.plugin._loader" not in sys.modules:
    # Even disabled, its plugin loader imports importlib.metadata (about 40 ms, a tenth of
    # a deploy's start-up) only to find none. pydantic imports the loader lazily, for
    # get_plugins() alone, so a loader that finds none is enough.
    _no_plugins = types.ModuleType("pydantic.plugin._loader")
    _no_plugins.get_plugins = lambda: ()  # type: ignore[attr-defined]
    sys.modules["pydantic.plugin._loader"] = _no_plugins

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

SERVICE_NAME = re.compile(r"^[a-z0-9_-]+$", re.IGNORECASE)
PERCENT = re.compile(r"^\d+%$")
# A scalar in an env map; YAML gives ints and bools where people mean strings.
Scalar = str | int | float | bool


def _shape(value: Any) -> str | None:
    """Discriminator: which branch of a list-or-map / bool-or-map union applies."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str | int | float):
        return "scalar"
    return None


class Section(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- hosts and roles ---------------------------------------------------------------------

# A host entry: "1.2.3.4", or {"1.2.3.4": "tag"}, or {"1.2.3.4": ["tag1", "tag2"]}.
HostEntry = Annotated[
    Annotated[str, Tag("scalar")] | Annotated[dict[str, str | list[str]], Tag("map")],
    Discriminator(_shape),
]


class LoggingConfig(Section):
    """Docker logging for the app's containers (root or per role; a role's is merged over
    the root's). Default: ``--log-opt max-size=10m``."""

    driver: str | None = Field(None, description="Docker log driver, e.g. `json-file` or `journald`.")
    options: dict[str, Scalar] = Field(
        default_factory=dict, description="Log driver options, e.g. `max-size: 100m`."
    )


class HealthcheckConfig(Section):
    """How the proxy checks a new container before it receives traffic."""

    path: str = Field("/up", description="Path requested; any 2xx answer is healthy.")
    interval: int = Field(1, ge=1, description="Seconds between checks.")
    timeout: int = Field(5, ge=1, description="Seconds before one check gives up.")


class BufferingConfig(Section):
    """Request and response buffering in the proxy."""

    requests: bool = Field(True, description="Buffer whole request bodies before proxying.")
    responses: bool = Field(True, description="Buffer whole responses before sending them.")
    memory: int | None = Field(None, ge=1, description="Bytes kept in memory before spilling to disk.")
    max_request_body: int | None = Field(None, ge=0, description="Larger requests get 413.")
    max_response_body: int | None = Field(None, ge=0, description="Larger responses fail.")


class ProxyLoggingConfig(Section):
    """Extra headers written to the proxy's request log."""

    request_headers: list[str] = Field(
        default_factory=lambda: ["Cache-Control", "Last-Modified", "User-Agent"],
        description="Request headers to log.",
    )
    response_headers: list[str] = Field(default_factory=list, description="Response headers to log.")


class SslCertificates(Section):
    """Custom TLS certificates, given as names of secrets holding PEM text."""

    certificate_pem: str = Field(description="Secret holding the certificate chain (PEM).")
    private_key_pem: str = Field(description="Secret holding the private key (PEM).")


class ProxyRunConfig(Section):
    """How the proxy container itself is run on each proxy host (Kamal 2.10+ `proxy.run`).
    Every app sharing a host must use the same settings."""

    http_port: int = Field(80, ge=1, le=65535, description="Published HTTP port.")
    https_port: int = Field(443, ge=1, le=65535, description="Published HTTPS port.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Prometheus metrics port.")
    debug: bool = Field(False, description="Debug logging in the proxy.")
    log_max_size: str = Field("10m", description="Docker log max-size for the proxy container.")
    publish: bool = Field(True, description="Publish the HTTP/HTTPS ports on the host.")
    bind_ips: list[str] | None = Field(None, description="Host IPs to publish the ports on.")
    registry: str | None = Field(None, description="Registry the proxy image comes from.")
    repository: str = Field(
        "shipyard/shipyard-proxy", description="Proxy image repository (Kamal: basecamp/kamal-proxy)."
    )
    version: str = Field("latest", description="Proxy image tag.")
    options: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="Extra `docker run` options for the proxy container."
    )


class ProxyConfig(Section):
    """Routing of a role (or accessory) through the shared proxy on each host."""

    host: str | None = Field(None, description="Host name(s) routed here, comma-separated.")
    hosts: list[str] | None = Field(None, description="Host names routed here (instead of `host`).")
    app_port: int = Field(80, ge=1, le=65535, description="Port the app listens on in its container.")
    ssl: Annotated[
        Annotated[bool, Tag("bool")] | Annotated[SslCertificates, Tag("map")],
        Discriminator(_shape),
    ] = Field(False, description="`true` for Let's Encrypt, or custom certificates from secrets.")
    ssl_redirect: bool | None = Field(None, description="Redirect HTTP to HTTPS when TLS is on.")
    forward_headers: bool | None = Field(None, description="Trust incoming X-Forwarded-* headers.")
    response_timeout: int | None = Field(None, ge=1, description="Seconds to wait for the app's response.")
    path_prefix: str | None = Field(None, description="Path prefix(es) routed here, comma-separated.")
    path_prefixes: list[str] | None = Field(None, description="Path prefixes routed here.")
    strip_path_prefix: bool | None = Field(None, description="Strip the prefix before forwarding.")
    healthcheck: HealthcheckConfig = Field(default_factory=HealthcheckConfig, description="Health check.")
    buffering: BufferingConfig = Field(default_factory=BufferingConfig, description="Buffering.")
    logging: ProxyLoggingConfig = Field(default_factory=ProxyLoggingConfig, description="Request log.")
    run: ProxyRunConfig | None = Field(None, description="How the proxy container is run.")

    @model_validator(mode="after")
    def _one_host_form(self) -> ProxyConfig:
        if self.host is not None and self.hosts is not None:
            raise ValueError("use either `host` or `hosts`, not both")
        if self.path_prefix is not None and self.path_prefixes is not None:
            raise ValueError("use either `path_prefix` or `path_prefixes`, not both")
        if self.ssl is True and not self.host_names:
            raise ValueError("`ssl: true` needs `host` or `hosts` (Let's Encrypt needs a name)")
        return self

    @property
    def host_names(self) -> list[str]:
        if self.hosts is not None:
            return list(self.hosts)
        return [h.strip() for h in (self.host or "").split(",") if h.strip()]

    @property
    def prefixes(self) -> list[str]:
        if self.path_prefixes is not None:
            return list(self.path_prefixes)
        return [p.strip() for p in (self.path_prefix or "").split(",") if p.strip()]


class EnvTagConfig(Section):
    """Extra env for hosts carrying a tag."""

    clear: dict[str, Scalar] = Field(default_factory=dict, description="Plain variables.")
    secret: list[str] = Field(default_factory=list, description="Names of secrets to pass.")


class EnvConfig(Section):
    """Environment variables for the app's containers. A plain map is the same as `clear`."""

    clear: dict[str, Scalar] = Field(default_factory=dict, description="Plain variables.")
    secret: list[str] = Field(
        default_factory=list,
        description="Secrets to pass, `NAME` or `NAME:SECRET_NAME`; sent through an env file (0600), never on a command line.",
    )
    tags: dict[str, EnvTagConfig | dict[str, Scalar]] = Field(
        default_factory=dict, description="Extra env for hosts with a tag (root only)."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_map_is_clear(cls, value: Any) -> Any:
        if isinstance(value, dict) and value and not set(value) & {"clear", "secret", "tags"}:
            return {"clear": value}
        return value


class RoleConfig(Section):
    """A role: a group of hosts running the same container with the same command."""

    hosts: list[HostEntry] = Field(default_factory=list, description="Hosts, optionally with tags.")
    cmd: str | None = Field(None, description="Command the container runs (default: the image's).")
    options: dict[str, Scalar | list[Scalar] | None] = Field(
        default_factory=dict, description="Extra `docker run` options, e.g. `memory: 2g`."
    )
    logging: LoggingConfig | None = Field(None, description="Logging, merged over the root's.")
    proxy: Annotated[
        Annotated[bool, Tag("bool")] | Annotated[ProxyConfig, Tag("map")], Discriminator(_shape)
    ] | None = Field(None, description="Route through the proxy (default: only the primary role).")
    labels: dict[str, Scalar] = Field(default_factory=dict, description="Extra container labels.")
    env: EnvConfig | None = Field(None, description="Env merged over the root's (no tags).")
    asset_path: str | None = Field(None, description="Assets bridged between versions.")
    stop_timeout: int | None = Field(None, ge=0, description="Seconds `docker stop` waits.")


RoleEntry = Annotated[
    Annotated[list[HostEntry], Tag("list")] | Annotated[RoleConfig, Tag("map")],
    Discriminator(_shape),
]

Servers = Annotated[
    Annotated[list[HostEntry], Tag("list")] | Annotated[dict[str, RoleEntry], Tag("map")],
    Discriminator(_shape),
]


# --- registry, builder, accessories -------------------------------------------------------

# A credential: a literal value, or a one-element list naming a secret.
Credential = Annotated[
    Annotated[str, Tag("scalar")] | Annotated[list[str], Tag("list")], Discriminator(_shape)
]


class RegistryConfig(Section):
    """Where images are pushed and pulled. `localhost:PORT` means a registry on the
    deployer that hosts reach through an SSH tunnel (no account needed)."""

    server: str | None = Field(None, description="Registry host[:port]; default Docker Hub.")
    username: Credential | None = Field(None, description="User name, or `[SECRET_NAME]`.")
    password: Credential | None = Field(None, description="Password, or `[SECRET_NAME]` (recommended).")

    @field_validator("username", "password")
    @classmethod
    def _one_secret(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("a secret reference is a list with exactly one secret name")
        return value

    @property
    def is_local(self) -> bool:
        return bool(self.server and re.match(r"^(localhost|127\.0\.0\.1):\d+$", self.server))


class BuilderCache(Section):
    """Build cache settings."""

    type: Literal["gha", "registry"] = Field(description="Cache type.")
    options: str | None = Field(None, description="Extra cache options.")
    image: str | None = Field(None, description="Cache image (registry type).")


class BuilderPack(Section):
    """Cloud Native Buildpacks (`pack`)."""

    builder: str = Field(description="Buildpacks builder image.")
    buildpacks: list[str] = Field(default_factory=list, description="Buildpacks to use.")


class BuilderConfig(Section):
    """How the app image is built on the deployer."""

    arch: str | list[str] | None = Field(None, description="amd64 and/or arm64 (Kamal requires it).")
    remote: str | None = Field(None, description="ssh:// URL of a remote builder.")
    local: bool = Field(True, description="Build locally.")
    driver: str | None = Field(None, description="Builder driver (we always use the classic builder).")
    cache: BuilderCache | None = Field(None, description="Build cache.")
    context: str | None = Field(
        None, description="Build context; default is a clean git clone of HEAD, `.` is the working tree."
    )
    dockerfile: str = Field("Dockerfile", description="Dockerfile path, relative to the context.")
    target: str | None = Field(None, description="Multi-stage target.")
    args: dict[str, Scalar] = Field(default_factory=dict, description="Build args.")
    secrets: list[str] = Field(default_factory=list, description="Secrets made available to the build, never stored in a layer.")
    ssh: str | None = Field(None, description="SSH agent socket forwarded to the build.")
    provenance: str | bool | None = Field(None, description="Provenance attestation.")
    sbom: bool | None = Field(None, description="SBOM attestation.")
    pack: BuilderPack | None = Field(None, description="Build with buildpacks.")


# An accessory file or directory: "local:remote[:opts]" or a map.
class AccessoryPath(Section):
    """A file uploaded for, or directory created for, an accessory."""

    local: str | None = Field(None, description="Local path (files only).")
    remote: str = Field(description="Path inside the accessory's directory.")
    mode: str | None = Field(None, description="File mode, e.g. `0640`.")
    owner: str | None = Field(None, description="Owner, e.g. `1000:1000`.")
    options: str | None = Field(None, description="Volume options, e.g. `ro`.")


PathEntry = Annotated[
    Annotated[str, Tag("scalar")] | Annotated[AccessoryPath, Tag("map")], Discriminator(_shape)
]


class AccessoryConfig(Section):
    """A long-lived service next to the app (database, cache). Not touched by `deploy`."""

    service: str | None = Field(None, description="Container name; default `<service>-<name>`.")
    image: str = Field(description="Image to run.")
    registry: RegistryConfig | None = Field(None, description="Registry for this image.")
    host: str | None = Field(None, description="One host.")
    hosts: list[str] | None = Field(None, description="Several hosts.")
    role: str | None = Field(None, description="Every host of a role.")
    roles: list[str] | None = Field(None, description="Every host of these roles.")
    tag: str | None = Field(None, description="Every host with a tag.")
    tags: list[str] | None = Field(None, description="Every host with one of these tags.")
    cmd: str | None = Field(None, description="Command to run.")
    port: str | int | None = Field(None, description="`\"5432\"` or `\"127.0.0.1:5432:5432\"`.")
    labels: dict[str, Scalar] = Field(default_factory=dict, description="Extra labels.")
    options: dict[str, Scalar | list[Scalar] | None] = Field(default_factory=dict, description="`docker run` options.")
    env: EnvConfig | None = Field(None, description="Environment.")
    files: list[PathEntry] = Field(default_factory=list, description="Files to upload.")
    directories: list[PathEntry] = Field(default_factory=list, description="Directories to create.")
    volumes: list[str] = Field(default_factory=list, description="Volumes, `host:container`.")
    network: str = Field("shipyard", description="Docker network.")
    proxy: ProxyConfig | None = Field(None, description="Route through the proxy.")

    @model_validator(mode="after")
    def _exactly_one_host_selector(self) -> AccessoryConfig:
        given = [k for k in ("host", "hosts", "role", "roles", "tag", "tags") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of host, hosts, role, roles, tag, tags"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


# --- boot, ssh, sshkit ---------------------------------------------------------------------


class BootConfig(Section):
    """How hosts are booted during a deploy: in groups, for a rolling deploy."""

    limit: int | str | None = Field(
        None, description='Hosts per group: a number, or `"25%"` of all hosts (at least 1).'
    )
    wait: int = Field(0, ge=0, description="Seconds to wait after each group.")
    parallel_roles: bool = Field(False, description="Boot a host's roles in parallel.")

    @field_validator("limit")
    @classmethod
    def _limit_shape(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1")
        if isinstance(value, str) and not PERCENT.match(value):
            raise ValueError('must be a number or a percentage such as "25%"')
        return value


class SshConfig(Section):
    """How shipyard connects to the hosts. Host keys are always checked."""

    user: str = Field("root", description="Login user.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    proxy: str | None = Field(None, description="Jump host, `host` or `user@host`.")
    proxy_command: str | None = Field(None, description="Proxy command, as in ssh_config.")
    log_level: str = Field("fatal", description="paramiko log level.")
    keys_only: bool = Field(False, description="Use only the listed keys, not the agent.")
    keys: list[str] = Field(default_factory=list, description="Private key files.")
    key_data: list[str] = Field(default_factory=list, description="Names of secrets holding private keys.")
    config: bool | str | list[str] = Field(
        True, description="Read ~/.ssh/config (true), not at all (false), or these files."
    )
    forward_agent: bool = Field(False, description="Forward the SSH agent.")


class SshkitConfig(Section):
    """Connection pool settings."""

    max_concurrent_starts: int = Field(30, ge=1, description="Hosts worked on at once.")
    pool_idle_timeout: int = Field(900, ge=0, description="Seconds an idle connection lives.")
    dns_retries: int = Field(3, ge=0, description="DNS lookup retries.")


# --- the whole file ----------------------------------------------------------------------


class DeployConfig(Section):
    """`config/deploy.yml`: one service, deployed to one or more roles of servers."""

    service: str = Field(description="Name of the service; used in container names and labels.")
    image: str | None = Field(None, description="Image name, without registry server or tag.")
    servers: Servers | None = Field(None, description="Hosts: a list (role `web`) or a map of roles.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Registry.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Environment variables.")
    labels: dict[str, Scalar] = Field(default_factory=dict, description="Extra labels on every container.")
    volumes: list[str] = Field(default_factory=list, description="Volumes, `host:container[:opts]`.")
    proxy: ProxyConfig = Field(default_factory=ProxyConfig, description="Proxy settings for proxied roles.")
    builder: BuilderConfig = Field(default_factory=BuilderConfig, description="Image build.")
    accessories: dict[str, AccessoryConfig] = Field(default_factory=dict, description="Accessories.")
    boot: BootConfig = Field(default_factory=BootConfig, description="Rolling boot.")
    ssh: SshConfig = Field(default_factory=SshConfig, description="SSH connection.")
    sshkit: SshkitConfig = Field(default_factory=SshkitConfig, description="Connection pool.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Container logging.")
    aliases: dict[str, str] = Field(default_factory=dict, description="Command aliases, `name: \"app exec ...\"`.")
    asset_path: str | None = Field(None, description="Assets bridged between versions.")
    hooks_path: str | None = Field(None, description="Shell hooks directory [.shipyard/hooks].")
    hooks_output: str | dict[str, str] | None = Field(None, description="`quiet` or `verbose`, or per hook.")
    secrets_path: str | None = Field(None, description="Secrets file prefix [.shipyard/secrets].")
    error_pages_path: str | None = Field(None, description="Directory of custom 4xx.html / 5xx.html pages.")
    retain_containers: int = Field(5, ge=1, description="Stopped containers kept per host by prune.")
    readiness_delay: int = Field(7, ge=0, description="Seconds a non-proxied container must stay up.")
    deploy_timeout: int = Field(30, ge=1, description="Seconds a new container has to become healthy.")
    drain_timeout: int = Field(30, ge=0, description="Seconds in-flight requests get to finish.")
    stop_timeout: int | None = Field(None, ge=0, description="Seconds `docker stop` waits.")
    primary_role: str = Field("web", description="Role whose first host holds the lock.")
    allow_empty_roles: bool = Field(False, description="Allow roles without hosts.")
    require_destination: bool = Field(False, description="Make `-d DESTINATION` mandatory.")
    minimum_version: str | None = Field(None, description="Oldest shipyard version that may deploy this.")
    run_directory: str | None = Field(None, description="Accepted for Kamal compatibility; ignored.")

    @field_validator("service")
    @classmethod
    def _service_name(cls, value: str) -> str:
        if not SERVICE_NAME.match(value):
            raise ValueError("may contain only letters, digits, `-` and `_`")
        return value

    @field_validator("hooks_output")
    @classmethod
    def _hooks_output(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        allowed = {"quiet", "verbose"}
        values = [value] if isinstance(value, str) else list((value or {}).values())
        for item in values:
            if item not in allowed:
                raise ValueError("must be `quiet` or `verbose`")
        return value


#: Section name for `shipyard docs SECTION` → (model, title). Kamal's section names.
DOC_SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "configuration": (DeployConfig, "config/deploy.yml"),
    "servers": (RoleConfig, "servers (roles)"),
    "role": (RoleConfig, "servers.ROLE"),
    "env": (EnvConfig, "env"),
    "registry": (RegistryConfig, "registry"),
    "proxy": (ProxyConfig, "proxy"),
    "builder": (BuilderConfig, "builder"),
    "accessory": (AccessoryConfig, "accessories.NAME"),
    "boot": (BootConfig, "boot"),
    "ssh": (SshConfig, "ssh"),
    "sshkit": (SshkitConfig, "sshkit"),
    "logging": (LoggingConfig, "logging"),
}
