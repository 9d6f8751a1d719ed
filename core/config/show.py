"""``shipyard config``: the merged configuration as YAML, secrets redacted.

Secret *names* (``env.secret``, ``registry.password: [NAME]``...) are shown, because they
say what the deploy needs; every secret *value* is ``[REDACTED]``, and so is any literal
credential written straight into the file.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from shipyard.core.errors import ShipyardError
from shipyard.core.output import REDACTED

if TYPE_CHECKING:
    from shipyard.core.config.model import Config
    from shipyard.core.context import Context


def secret_names(config: Config) -> list[str]:
    """Every secret the config refers to, in first-mention order."""
    schema = config.schema
    names: list[str] = []
    for credential in (schema.registry.username, schema.registry.password):
        if isinstance(credential, list):
            names.extend(credential)
    envs = [schema.env, *schema.env.tags.values()]
    envs += [role_env for role_env in _role_envs(config)]
    envs += [a.env for a in schema.accessories.values() if a.env]
    for env in envs:
        for entry in getattr(env, "secret", []):
            names.append(entry.partition(":")[2] or entry)
    names += schema.builder.secrets + schema.ssh.key_data
    ssl = schema.proxy.ssl
    if not isinstance(ssl, bool):
        names += [ssl.certificate_pem, ssl.private_key_pem]
    return list(dict.fromkeys(names))


def _role_envs(config: Config) -> list[Any]:
    servers = config.schema.servers
    if not isinstance(servers, dict):
        return []
    return [entry.env for entry in servers.values() if not isinstance(entry, list) and entry.env]


def render_config(ctx: Context) -> tuple[dict[str, Any], str]:
    import yaml

    config = ctx.config
    data = copy.deepcopy(config.data)
    registry = data.get("registry")
    if isinstance(registry, dict):
        for key in ("username", "password"):
            if isinstance(registry.get(key), str) and key == "password":
                registry[key] = REDACTED
    try:
        # Loading the secrets registers their values with the output layer, which then
        # replaces them anywhere they might surface (e.g. interpolated from the environment).
        available = ctx.secrets.all()
    except ShipyardError as error:
        ctx.output.warn(f"secrets not loaded: {error}")
        available = {}
    secrets = {name: (REDACTED if name in available else "(missing)") for name in secret_names(config)}
    try:
        version: str | None = ctx.version
    except ShipyardError:
        version = None
    resolved = {
        "roles": [role.name for role in config.roles],
        "hosts": config.all_hosts,
        "primary_host": config.primary_host if config.roles and config.primary_role.hosts else None,
        "version": version,
        "repository": config.repository,
        "absolute_image": config.image_ref(version) if version else None,
        "secrets": secrets,
    }
    payload = {**data, "resolved": resolved}
    text = yaml.safe_dump(payload, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip()
    header = "# " + " + ".join(str(p.relative_to(config.project_dir)) for p in config.files)
    return payload, f"{header}\n{text}"
