"""How to reach one host: deploy.yml's ``ssh:`` section merged with ssh_config files.

Pure logic (paramiko is imported only to parse ssh_config files), so it is unit-tested
without servers. Precedence, per setting: a value written in deploy.yml wins, then the
ssh_config files (first obtained value wins, as in OpenSSH), then the schema default.

Environment:

* ``SHIPYARD_SSH_CONFIG``: an ssh_config file read before all others (so it wins),
  whatever ``ssh.config`` says. Several files may be given, separated by ``:``.
* ``SHIPYARD_SSH_KNOWN_HOSTS``: known_hosts file(s) trusted in addition to the others.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.core.errors import ConfigError
from shipyard.plugins._ssh_known_hosts import host_key_name

if TYPE_CHECKING:
    from shipyard.core.config.schema import SshConfig

SSH_CONFIG_ENV = "SHIPYARD_SSH_CONFIG"
KNOWN_HOSTS_ENV = "SHIPYARD_SSH_KNOWN_HOSTS"
DEFAULT_CONFIG_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)
DEFAULT_IDENTITY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 30  # seconds, as Kamal
SSH_PORT = 22

#: One host's ssh_config options, as paramiko's ``SSHConfig.lookup`` returns them:
#: lower-case keys, ``identityfile`` a list, everything else a string.
Options = Mapping[str, str | list[str]]
Lookup = Callable[[str], Options]


def no_config(host: str) -> Options:
    """The lookup used when no ssh_config file is read."""
    return {}


@dataclass(frozen=True)
class Hop:
    """A jump host as written: ``[user@]host[:port]``."""

    host: str
    user: str | None = None
    port: int | None = None


def parse_hop(text: str) -> Hop:
    spec = text.strip()
    user: str | None = None
    if "@" in spec:
        user, _, spec = spec.rpartition("@")
    port: int | None = None
    if spec.startswith("["):  # [ipv6]:port or [host]
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
        port = _port(port_text, text)
    else:
        host = spec
    if not host or (user is not None and not user):
        raise ConfigError([f"ssh.proxy: {text!r} is not a jump host; use `host`, `user@host` or `user@host:port`"])
    return Hop(host, user, port)


def parse_jumps(text: str) -> tuple[Hop, ...]:
    """``a,user@b:2222`` → the hops, in the order they are passed through."""
    return tuple(parse_hop(part) for part in text.split(",") if part.strip())


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError([f"ssh.proxy: {spec!r} has a bad port {text!r}"])
    return port


@dataclass(frozen=True)
class SshSettings:
    """Everything needed to open (and describe) the connection to one host."""

    host: str  # the name shipyard calls the host (deploy.yml)
    hostname: str  # what we connect to (ssh_config HostName, else host)
    port: int
    user: str
    key_files: tuple[str, ...] = ()
    #: (secret name, PEM text) for each ``ssh.key_data`` entry; never shown.
    key_data: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    keys_only: bool = False
    jumps: tuple[SshSettings, ...] = ()  # hops in order; each hop has no jumps itself
    proxy_command: str | None = None
    known_hosts_files: tuple[str, ...] = ()
    host_key_alias: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    forward_agent: bool = False
    config_files: tuple[str, ...] = ()
    default_config: bool = False  # config_files is what `ssh` reads by itself
    log_level: str = "fatal"
    keepalive: int = KEEPALIVE_INTERVAL
    dns_retries: int = 3  # sshkit.dns_retries: extra tries when a lookup fails temporarily

    @property
    def host_key_names(self) -> tuple[str, ...]:
        """The names the host's key is looked up under in known_hosts (OpenSSH: the
        HostKeyAlias, else the HostName, with ``[...]:port`` off port 22)."""
        return (host_key_name(self.host_key_alias or self.hostname, self.port),)

    @property
    def address(self) -> str:
        """``user@hostname[:port]`` for messages."""
        port = f":{self.port}" if self.port != SSH_PORT else ""
        return f"{self.user}@{self.hostname}{port}"

    @property
    def route(self) -> str:
        """How the host is reached, for messages: ``root@10.0.0.2 via root@bastion``."""
        via = ""
        if self.jumps:
            via = " via " + " → ".join(j.address for j in self.jumps)
        elif self.proxy_command:
            via = f" via proxy command `{self.proxy_command}`"
        return self.address + via

    @property
    def agent_allowed(self) -> bool:
        return not self.keys_only

    @property
    def identity_files(self) -> tuple[str, ...]:
        """Key files to try: the listed ones, then (unless keys_only) the default
        ``~/.ssh/id_*``. Expanded; may not exist."""
        files = list(self.key_files)
        if not self.keys_only:
            files += [str(Path(f).expanduser()) for f in DEFAULT_IDENTITY_FILES]
        return tuple(dict.fromkeys(files))


# ---------------------------------------------------------------------------- files


def config_files(
    setting: bool | str | list[str], environ: Mapping[str, str]
) -> tuple[list[str], bool]:
    """The ssh_config files to read, highest priority first, and whether they are
    exactly what the ``ssh`` binary reads by itself.

    An explicitly named file that does not exist is a config error; the default files
    are read only when present.
    """
    files: list[str] = []
    override = [p for p in environ.get(SSH_CONFIG_ENV, "").split(os.pathsep) if p.strip()]
    for raw in override:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ConfigError([f"{SSH_CONFIG_ENV}: {raw}: no such ssh_config file"])
        files.append(str(path))
    if setting is True:
        files += [str(Path(p).expanduser()) for p in DEFAULT_CONFIG_FILES if Path(p).expanduser().is_file()]
        return files, not override
    if setting is False:
        return files, False
    for raw in [setting] if isinstance(setting, str) else setting:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise ConfigError([f"ssh.config: {raw}: no such ssh_config file"])
        files.append(str(path))
    return files, False


def read_ssh_config(paths: Sequence[str]) -> Lookup:
    """Parse ``paths`` (in priority order) with paramiko's SSHConfig."""
    if not paths:
        return no_config
    from shipyard.plugins._ssh_import import paramiko

    parsed = paramiko.SSHConfig()
    for path in paths:
        try:
            with open(path) as handle:
                parsed.parse(handle)
        except (OSError, ValueError, paramiko.ConfigParseError) as error:
            raise ConfigError([f"ssh.config: {path}: cannot be read: {error}"]) from error

    def lookup(host: str) -> Options:
        try:
            return dict(parsed.lookup(host))
        except Exception as error:  # Match exec, canonicalisation...
            raise ConfigError([f"ssh.config: looking up {host} failed: {type(error).__name__}: {error}"]) from error

    return lookup


# ---------------------------------------------------------------------------- merging


def _text(options: Options, key: str) -> str | None:
    value = options.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or value.strip().lower() == "none":
        return None
    return value.strip()


def _list(options: Options, key: str) -> list[str]:
    value = options.get(key)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _yes(options: Options, key: str) -> bool:
    return (_text(options, key) or "").lower() in ("yes", "true")


def _expand(paths: Iterable[str]) -> list[str]:
    return [str(Path(p).expanduser()) for p in paths]


def _known_hosts(options: Options, environ: Mapping[str, str]) -> list[str]:
    files = [p for p in environ.get(KNOWN_HOSTS_ENV, "").split(os.pathsep) if p.strip()]
    for value in _list(options, "userknownhostsfile"):
        files += value.split()
    files.append(USER_KNOWN_HOSTS)
    global_files = [f for v in _list(options, "globalknownhostsfile") for f in v.split()]
    files += global_files or list(GLOBAL_KNOWN_HOSTS)
    return list(dict.fromkeys(f for f in _expand(files) if f != "/dev/null"))


def _timeout(options: Options) -> float:
    value = _text(options, "connecttimeout")
    try:
        return float(value) if value else DEFAULT_CONNECT_TIMEOUT
    except ValueError:
        return DEFAULT_CONNECT_TIMEOUT


def _config_port(options: Options, where: str) -> int | None:
    value = _text(options, "port")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError([f"ssh.config: Port {value!r} for {where} is not a number"]) from None


def substitute_proxy_command(command: str, hostname: str, port: int, user: str) -> str:
    """ssh_config tokens in a ProxyCommand: ``%h``, ``%p``, ``%r``, ``%%``."""
    tokens = {"h": hostname, "p": str(port), "r": user, "%": "%"}
    out: list[str] = []
    i = 0
    while i < len(command):
        char = command[i]
        if char == "%" and i + 1 < len(command) and command[i + 1] in tokens:
            out.append(tokens[command[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def resolve(
    ssh: SshConfig,
    host: str,
    *,
    lookup: Lookup = no_config,
    secret: Callable[[str], str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_paths: Sequence[str] = (),
    default_config: bool = False,
    dns_retries: int = 3,
) -> SshSettings:
    """Merge deploy.yml's ``ssh`` section with the ssh_config options for ``host``."""
    env = os.environ if environ is None else environ
    explicit = ssh.model_fields_set
    options = lookup(host)
    hostname = _text(options, "hostname") or host
    user = ssh.user if "user" in explicit else (_text(options, "user") or ssh.user)
    port = ssh.port if "port" in explicit else (_config_port(options, host) or ssh.port)
    keys_only = ssh.keys_only or _yes(options, "identitiesonly")
    base_keys = _expand(ssh.keys)
    key_data: tuple[tuple[str, str], ...] = ()
    if ssh.key_data:
        if secret is None:
            raise ConfigError(["ssh.key_data: secrets are not available here"])
        key_data = tuple((name, secret(name)) for name in ssh.key_data)

    def hop_settings(hop: Hop) -> SshSettings:
        hop_options = lookup(hop.host)
        hop_user = hop.user or _text(hop_options, "user") or user
        return SshSettings(
            host=hop.host,
            hostname=_text(hop_options, "hostname") or hop.host,
            port=hop.port or _config_port(hop_options, hop.host) or SSH_PORT,
            user=hop_user,
            key_files=tuple(dict.fromkeys(base_keys + _expand(_list(hop_options, "identityfile")))),
            key_data=key_data,
            keys_only=keys_only or _yes(hop_options, "identitiesonly"),
            known_hosts_files=tuple(_known_hosts(hop_options, env)),
            host_key_alias=_text(hop_options, "hostkeyalias"),
            connect_timeout=_timeout(hop_options),
            config_files=tuple(config_paths),
            default_config=default_config,
            log_level=ssh.log_level,
            dns_retries=dns_retries,
        )

    jumps: tuple[SshSettings, ...] = ()
    proxy_command: str | None = None
    if ssh.proxy:
        jumps = tuple(hop_settings(h) for h in parse_jumps(ssh.proxy))
    elif ssh.proxy_command:
        proxy_command = substitute_proxy_command(ssh.proxy_command, hostname, port, user)
    elif _text(options, "proxyjump"):
        jumps = tuple(hop_settings(h) for h in parse_jumps(_text(options, "proxyjump") or ""))
    elif _text(options, "proxycommand"):
        # paramiko has already substituted the tokens.
        proxy_command = _text(options, "proxycommand")

    return SshSettings(
        host=host,
        hostname=hostname,
        port=port,
        user=user,
        key_files=tuple(dict.fromkeys(base_keys + _expand(_list(options, "identityfile")))),
        key_data=key_data,
        keys_only=keys_only,
        jumps=jumps,
        proxy_command=proxy_command,
        known_hosts_files=tuple(_known_hosts(options, env)),
        host_key_alias=_text(options, "hostkeyalias"),
        connect_timeout=_timeout(options),
        forward_agent=ssh.forward_agent or _yes(options, "forwardagent"),
        config_files=tuple(config_paths),
        default_config=default_config,
        log_level=ssh.log_level,
        dns_retries=dns_retries,
    )


def settings_for(
    ssh: SshConfig,
    host: str,
    *,
    secret: Callable[[str], str] | None = None,
    environ: Mapping[str, str] | None = None,
    dns_retries: int = 3,
) -> SshSettings:
    """:func:`resolve` with the ssh_config files ``ssh.config`` names, read from disk."""
    env = os.environ if environ is None else environ
    paths, default = config_files(ssh.config, env)
    return resolve(
        ssh, host, lookup=read_ssh_config(paths), secret=secret, environ=env,
        config_paths=paths, default_config=default, dns_retries=dns_retries,
    )


# ---------------------------------------------------------------------------- ssh(1)


def remote_command(argv: Sequence[str]) -> str:
    """The command line sent to sshd for ``argv``: quoted exactly once, because the
    remote login shell splits it again (``sh -c LINE``)."""
    if not argv:
        raise ValueError("empty command")
    return shlex.join(argv)


def _option_value(path: str) -> str:
    """A file name inside an ``-o Key=value`` option (ssh splits on whitespace)."""
    return f'"{path}"' if any(c.isspace() for c in path) else path


def _escape_percent(text: str) -> str:
    return text.replace("%", "%%")


def _ssh_options(settings: SshSettings, extra_keys: Sequence[str] = ()) -> list[str]:
    """Options common to the target and every jump host."""
    args = ["-p", str(settings.port), "-l", settings.user]
    args += ["-o", "StrictHostKeyChecking=yes"]
    if settings.known_hosts_files:
        files = " ".join(_option_value(f) for f in settings.known_hosts_files)
        args += ["-o", f"UserKnownHostsFile={files}"]
    if settings.host_key_alias:
        args += ["-o", f"HostKeyAlias={settings.host_key_alias}"]
    args += ["-o", f"ConnectTimeout={max(1, round(settings.connect_timeout))}"]
    args += ["-o", f"ServerAliveInterval={settings.keepalive}"]
    if settings.keys_only:
        args += ["-o", "IdentitiesOnly=yes"]
    for key in [*settings.key_files, *extra_keys]:
        args += ["-i", key]
    return args


def proxy_command_for_jumps(
    jumps: Sequence[SshSettings], *, config_args: Sequence[str] = (), extra_keys: Sequence[str] = ()
) -> str | None:
    """A ProxyCommand that reaches the target through ``jumps`` (``ssh -W``), with each
    hop's own options (OpenSSH's ``-J`` would not pass them on to the hops)."""
    proxy: str | None = None
    for hop in jumps:
        argv = ["ssh", *config_args, *_ssh_options(hop, extra_keys), "-o", "BatchMode=yes"]
        if proxy is not None:
            argv += ["-o", f"ProxyCommand={proxy}"]
        # The ssh that runs this command expands %h/%p (the next hop); our own text is
        # escaped so it reaches the hop's ssh unchanged.
        proxy = _escape_percent(shlex.join(argv)) + " -W '[%h]:%p' " + _escape_percent(shlex.quote(hop.hostname))
    return proxy


def interactive_argv(
    settings: SshSettings,
    argv: Sequence[str],
    *,
    config_file: str | None = None,
    extra_keys: Sequence[str] = (),
    ssh_binary: str = "ssh",
) -> list[str]:
    """The ``ssh -t`` command line that runs ``argv`` on the host attached to this
    terminal, built from the same settings as the paramiko connection.

    ``config_file`` is the one ssh_config file to pass with ``-F`` (the caller merges
    several into one); None means "whatever settings.config_files implies".
    ``extra_keys`` are key files written for ``key_data`` secrets.
    """
    if config_file is not None:
        config_args = ["-F", config_file]
    elif settings.default_config:
        config_args = []
    elif len(settings.config_files) == 1:
        config_args = ["-F", settings.config_files[0]]
    elif not settings.config_files:
        config_args = ["-F", "/dev/null"]
    else:
        raise ValueError("several ssh_config files: pass config_file (one file including them)")
    args = [ssh_binary, "-t", *config_args, *_ssh_options(settings, extra_keys)]
    if settings.forward_agent:
        args.append("-A")
    if settings.jumps:
        proxy = proxy_command_for_jumps(settings.jumps, config_args=config_args, extra_keys=extra_keys)
        args += ["-o", f"ProxyCommand={proxy}"]
    elif settings.proxy_command:
        args += ["-o", f"ProxyCommand={_escape_percent(settings.proxy_command)}"]
    return [*args, "--", settings.hostname, remote_command(argv)]


def include_config_text(paths: Sequence[str]) -> str:
    """An ssh_config file that reads ``paths`` in order (for ``ssh -F``)."""
    return "".join(f"Include {_option_value(str(Path(p).resolve()))}\n" for p in paths)
