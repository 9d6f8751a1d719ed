"""The paramiko side of the ssh plugin. Imported only when the first host is connected.

One :class:`SshTransport` per host holds one authenticated ``paramiko.Transport``;
commands, SFTP and port forwards are channels multiplexed on it. Jump hosts are shared
by every host that goes through them (one connection to the bastion per run).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import posixpath
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shipyard.core.errors import (
    HostAuthFailed,
    HostError,
    HostKeyRefused,
    HostUnreachable,
    PluginError,
)
from shipyard.core.transport import CommandResult, OutputSink, Transport
from shipyard.plugins._ssh_import import paramiko
from shipyard.plugins._ssh_known_hosts import KnownHosts, Verdict, key_fingerprint
from shipyard.plugins._ssh_settings import (
    SshSettings,
    include_config_text,
    interactive_argv,
    remote_command,
    settings_for,
)
from shipyard.plugins.ssh import STATS

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.output import Output

#: Exec sessions open at once per connection. OpenSSH's MaxSessions defaults to 10 and
#: the SFTP subsystem holds one; further commands wait for a free session (and the
#: server may free closed sessions a moment late, see _session).
MAX_SESSIONS = 8
#: Tries to open a session while the server is at MaxSessions (about 20 s in all).
SESSION_RETRIES = 60
CHUNK = 32768
#: stdin up to this size is written before reading output; larger stdin gets a thread.
INLINE_STDIN = 32768
FORWARD_BIND = "localhost"
LOG_LEVELS = {
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def connect(ctx: Context, host: str) -> SshTransport:
    """The ``shipyard_transport`` hook body: resolve the settings, connect, return."""
    config = ctx.config.schema
    settings = settings_for(
        config.ssh,
        host,
        secret=lambda name: ctx.secrets[name],
        dns_retries=config.sshkit.dns_retries,
    )
    configure_logging(settings.log_level, ctx.output)
    transport = SshTransport(host, settings, hub=hub_for(ctx), output=ctx.output)
    transport.connect()
    return transport


# ------------------------------------------------------------------------------ logging


class _OutputHandler(logging.Handler):
    """paramiko's log lines go to ``ctx.output.detail`` (shown with -v), never print."""

    def __init__(self, output: Output) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never break a connection
            self.output.detail(f"paramiko: {record.getMessage()}")


def configure_logging(level_name: str, output: Output) -> None:
    """ssh.log_level sets paramiko's logger level (Kamal: net-ssh's ``fatal``)."""
    logger = logging.getLogger("paramiko")
    logger.setLevel(LOG_LEVELS.get(level_name.lower(), logging.CRITICAL))
    for handler in list(logger.handlers):
        if isinstance(handler, _OutputHandler):
            logger.removeHandler(handler)
    logger.addHandler(_OutputHandler(output))
    logger.propagate = False


def _one_line(text: object) -> str:
    """Error texts from paramiko and the OS, squeezed onto the one line a host gets."""
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------ keys


def key_from_text(text: str) -> paramiko.PKey:
    """A private key from PEM/OpenSSH text (``ssh.key_data`` secrets)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    data = text.strip().encode() + b"\n"
    loaded: object
    try:
        loaded = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        loaded = serialization.load_pem_private_key(data, password=None)
    key_class: type[paramiko.PKey]
    if isinstance(loaded, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise ValueError(f"unsupported key type {type(loaded).__name__}")
    return key_class.from_private_key(io.StringIO(data.decode()))


def _key_problem(error: BaseException) -> str:
    text = _one_line(error) or type(error).__name__
    if isinstance(error, paramiko.PasswordRequiredException) or "encrypted" in text.lower():
        return "is encrypted (load it into ssh-agent instead)"
    return f"cannot be read ({text})"


def _candidate_keys(settings: SshSettings) -> tuple[list[tuple[str, paramiko.PKey]], list[str], paramiko.Agent | None]:
    """Keys to offer, in order: listed files, key_data, the agent, default files."""
    keys: list[tuple[str, paramiko.PKey]] = []
    problems: list[str] = []
    listed = set(settings.key_files)

    def from_file(path: str) -> None:
        if not Path(path).is_file():
            if path in listed:
                problems.append(f"{path} does not exist")
            return
        try:
            keys.append((path, paramiko.PKey.from_path(path)))
        except Exception as error:  # any unreadable key is skipped, and said
            problems.append(f"{path} {_key_problem(error)}")

    for path in settings.key_files:
        from_file(path)
    for name, text in settings.key_data:
        try:
            keys.append((f"key_data {name}", key_from_text(text)))
        except Exception as error:
            problems.append(f"key_data {name} {_key_problem(error)}")
    agent: paramiko.Agent | None = None
    if settings.agent_allowed and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            keys += [(f"ssh-agent key {k.get_fingerprint().hex()[:16]}", k) for k in agent.get_keys()]
        except Exception as error:  # a broken agent is not fatal
            problems.append(f"ssh-agent: {error}")
    if not settings.keys_only:
        for path in settings.identity_files:
            if path not in listed:
                from_file(path)
    return keys, problems, agent


# ------------------------------------------------------------------------------ connecting


def _unreachable_reason(settings: SshSettings, error: BaseException) -> str:
    return _one_line(_describe_unreachable(settings, error))


def _describe_unreachable(settings: SshSettings, error: BaseException) -> str:
    where = f"{settings.hostname}:{settings.port}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host name {settings.hostname} ({error.strerror or error})"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where} (is sshd running?)"
    if isinstance(error, TimeoutError):
        return f"timed out connecting to {where} after {settings.connect_timeout:g}s"
    if isinstance(error, paramiko.ProxyCommandFailure):
        return f"proxy command failed: {error}"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {where} ({error.strerror})"
    if isinstance(error, OSError):
        return f"cannot connect to {where}: {error.strerror or error}"
    if isinstance(error, EOFError):
        return f"{where} closed the connection during the SSH handshake"
    return f"SSH handshake with {where} failed: {error}"


def _open_socket(settings: SshSettings) -> socket.socket | paramiko.ProxyCommand:
    if settings.proxy_command:
        # OpenSSH runs ProxyCommand through the shell; so do we.
        return paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", f"exec {settings.proxy_command}"]))
    tries = max(0, settings.dns_retries) + 1
    for attempt in range(tries):
        try:
            return socket.create_connection((settings.hostname, settings.port), timeout=settings.connect_timeout)
        except socket.gaierror as error:
            if error.errno != socket.EAI_AGAIN or attempt + 1 == tries:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def _prefer_known_key_types(t: paramiko.Transport, known: Sequence[str]) -> None:
    """Ask for the host key types we hold, so the server shows us a key we can check
    (paramiko would otherwise pick its own favourite and find it "unknown")."""
    options = t.get_security_options()
    available = list(options.key_types)
    wanted: list[str] = []
    for key_type in known:
        for algorithm in _RSA_ALGORITHMS if key_type == "ssh-rsa" else (key_type,):
            if algorithm in available and algorithm not in wanted:
                wanted.append(algorithm)
    if wanted:
        options.key_types = wanted + [a for a in available if a not in wanted]


def _check_host_key(t: paramiko.Transport, settings: SshSettings, known: KnownHosts, prefix: str) -> None:
    key = t.get_remote_server_key()
    offered = f"{key.get_name()} {key_fingerprint(key.get_base64())}"
    verdict = known.verdict(settings.host_key_names, key.get_name(), key.get_base64())
    name = settings.host_key_alias or settings.hostname
    keyscan = "ssh-keyscan" + (f" -p {settings.port}" if settings.port != 22 else "") + f" -H {name}"
    if verdict is Verdict.KNOWN:
        return
    if verdict is Verdict.UNKNOWN:
        raise _Refused(
            f"{prefix}host key is not known (add it to ~/.ssh/known_hosts, e.g. {keyscan} >> "
            f"~/.ssh/known_hosts; the server offered {offered})"
        )
    if verdict is Verdict.REVOKED:
        raise _Refused(f"{prefix}host key {offered} is REVOKED in known_hosts; refusing to connect")
    entries = known.for_names(settings.host_key_names)
    where = entries[0].source if entries else "known_hosts"
    raise _Refused(
        f"{prefix}host key has CHANGED: the server offered {offered}, which does not match {where} "
        f"(someone may be intercepting the connection; if the server was reinstalled, "
        f"remove the old key with ssh-keygen -R {name})"
    )


class _Refused(Exception):
    """Host key refused; the message is the reason."""


class _AuthFailed(Exception):
    """Authentication refused; the message is the reason."""


def _authenticate(t: paramiko.Transport, settings: SshSettings, prefix: str) -> None:
    keys, problems, agent = _candidate_keys(settings)
    tried: list[str] = []
    try:
        for label, key in keys:
            try:
                t.auth_publickey(settings.user, key)
            except paramiko.BadAuthenticationType as error:
                allowed = ", ".join(error.allowed_types) or "none"
                raise _AuthFailed(
                    f"{prefix}{settings.address} does not accept public keys (it allows: {allowed})"
                ) from error
            except paramiko.AuthenticationException:
                tried.append(label)
                continue
            if t.is_authenticated():
                return
            raise _AuthFailed(f"{prefix}{settings.address} wants a second authentication step, which shipyard does not support")
    finally:
        if agent is not None:
            with contextlib.suppress(Exception):
                agent.close()
    offered = ", ".join(tried) if tried else "no usable key"
    extra = f"; {'; '.join(problems)}" if problems else ""
    raise _AuthFailed(f"{prefix}authentication failed for {settings.address} (offered {offered}{extra})")


def open_connection(
    settings: SshSettings,
    host: str,
    *,
    sock: paramiko.Channel | None = None,
    jump: bool = False,
    output: Output | None = None,
) -> paramiko.Transport:
    """TCP (or ``sock``), SSH handshake, host-key check, authentication: an
    authenticated paramiko Transport. Every failure is a HostError naming ``host``
    (the target; a jump host's failure says which jump host)."""
    prefix = f"jump host {settings.address}: " if jump else ""
    known = KnownHosts.load(settings.known_hosts_files)
    channel_or_socket: socket.socket | paramiko.ProxyCommand | paramiko.Channel
    try:
        channel_or_socket = sock if sock is not None else _open_socket(settings)
    except (OSError, paramiko.SSHException) as error:
        raise HostUnreachable(host, prefix + _unreachable_reason(settings, error)) from error
    t = paramiko.Transport(channel_or_socket)
    try:
        t.banner_timeout = settings.connect_timeout
        t.auth_timeout = settings.connect_timeout
        t.set_keepalive(settings.keepalive)
        _prefer_known_key_types(t, known.key_types_for(settings.host_key_names))
        try:
            t.start_client(timeout=settings.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise HostUnreachable(host, prefix + _unreachable_reason(settings, error)) from error
        try:
            _check_host_key(t, settings, known, prefix)
        except _Refused as refused:
            if output is not None:
                output.detail(f"known_hosts files read: {', '.join(known.files) or 'none'}", host=host)
            raise HostKeyRefused(host, str(refused)) from None
        try:
            _authenticate(t, settings, prefix)
        except _AuthFailed as failed:
            raise HostAuthFailed(host, str(failed)) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise HostUnreachable(
                host, _one_line(f"{prefix}connection to {settings.address} lost during authentication: {error}")
            ) from error
    except BaseException:
        t.close()
        with contextlib.suppress(Exception):
            channel_or_socket.close()
        raise
    STATS.record(f"{settings.hostname}:{settings.port}")
    if output is not None:
        output.detail(f"ssh: connected to {settings.address}{' (jump host)' if jump else ''}", host=host)
    return t


def _tunnel(through: paramiko.Transport, settings: SshSettings, host: str, via: SshSettings) -> paramiko.Channel:
    """A direct-tcpip channel from a jump host to ``settings``' host and port."""
    try:
        return through.open_channel(
            "direct-tcpip", (settings.hostname, settings.port), ("127.0.0.1", 0),
            timeout=settings.connect_timeout,
        )
    except paramiko.ChannelException as error:
        raise HostUnreachable(
            host, _one_line(f"jump host {via.address} cannot reach {settings.hostname}:{settings.port} ({error.text})")
        ) from error
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise HostUnreachable(host, _one_line(
            f"jump host {via.address} failed to open a tunnel to {settings.hostname}:{settings.port}: {error}"
        )) from error


# ------------------------------------------------------------------------------ jump hosts


@dataclass
class _Shared:
    transport: paramiko.Transport
    refs: int = 0


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    shared: _Shared | None = None
    failure: HostError | None = None
    failed_at: float = 0.0


JumpKey = tuple[tuple[str, int, str], ...]


def _key(chain: Sequence[SshSettings]) -> JumpKey:
    return tuple((j.hostname, j.port, j.user) for j in chain)


class JumpHub:
    """The jump-host connections of one run, shared by every host behind them and
    closed when the last host using them closes."""

    def __init__(self, output: Output | None = None) -> None:
        self._lock = threading.Lock()
        self._slots: dict[JumpKey, _Slot] = {}
        self.output = output

    def _slot(self, key: JumpKey) -> _Slot:
        with self._lock:
            return self._slots.setdefault(key, _Slot())

    def acquire(self, chain: Sequence[SshSettings], host: str) -> paramiko.Transport:
        """The transport to the last hop of ``chain``, connecting hops as needed.
        Every hop's reference count is raised; call :meth:`release` with the same chain."""
        through: paramiko.Transport | None = None
        taken: list[JumpKey] = []
        try:
            for depth in range(1, len(chain) + 1):
                hop = chain[depth - 1]
                key = _key(chain[:depth])
                slot = self._slot(key)
                with slot.lock:
                    if slot.shared is None or not slot.shared.transport.is_active():
                        # Hosts that waited for a connection that just failed get the
                        # same answer instead of waiting out the timeout again.
                        recent = time.monotonic() - slot.failed_at < hop.connect_timeout
                        if slot.failure is not None and recent:
                            raise type(slot.failure)(host, slot.failure.reason)
                        try:
                            sock = _tunnel(through, hop, host, chain[depth - 2]) if through is not None else None
                            transport = open_connection(hop, host, sock=sock, jump=True, output=self.output)
                        except HostError as error:
                            slot.failure, slot.failed_at = error, time.monotonic()
                            raise
                        refs = slot.shared.refs if slot.shared is not None else 0
                        slot.shared = _Shared(transport, refs)
                        slot.failure = None
                    slot.shared.refs += 1
                    taken.append(key)
                    through = slot.shared.transport
        except BaseException:
            self._release_keys(taken)
            raise
        assert through is not None
        return through

    def release(self, chain: Sequence[SshSettings]) -> None:
        self._release_keys([_key(chain[:d]) for d in range(1, len(chain) + 1)])

    def _release_keys(self, keys: Sequence[JumpKey]) -> None:
        for key in reversed(keys):  # deepest hop first
            slot = self._slot(key)
            with slot.lock:
                if slot.shared is None:
                    continue
                slot.shared.refs -= 1
                if slot.shared.refs <= 0:
                    slot.shared.transport.close()
                    slot.shared = None


_HUBS: weakref.WeakKeyDictionary[Context, JumpHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_for(ctx: Context) -> JumpHub:
    with _HUBS_LOCK:
        hub = _HUBS.get(ctx)
        if hub is None:
            hub = _HUBS[ctx] = JumpHub(ctx.output)
        return hub


# ------------------------------------------------------------------------------ forwards


def _pump(channel: paramiko.Channel, sock: socket.socket) -> None:
    """Copy bytes both ways until both sides have finished sending."""
    sources: list[paramiko.Channel | socket.socket] = [channel, sock]
    try:
        while sources:
            readable, _, _ = select.select(sources, [], [])
            if sock in readable:
                data = sock.recv(CHUNK)
                if data:
                    channel.sendall(data)
                else:
                    sources.remove(sock)
                    channel.shutdown_write()
            if channel in readable:
                data = channel.recv(CHUNK)
                if data:
                    sock.sendall(data)
                else:
                    sources.remove(channel)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
    except (OSError, EOFError, paramiko.SSHException, ValueError):
        pass  # either side went away; closing both is all there is to do
    finally:
        channel.close()
        sock.close()


class RemoteForward:
    """``ssh -R``: connections to ``remote_port`` on the host's loopback are carried back
    over the SSH connection to ``local_host:local_port`` on this machine."""

    def __init__(self, owner: SshTransport, remote_port: int, local_host: str, local_port: int) -> None:
        self.owner = owner
        self.remote_port = remote_port
        self.local_host = local_host
        self.local_port = local_port
        self._channels: set[paramiko.Channel] = set()
        self._lock = threading.Lock()
        self.closed = False

    def accept(self, channel: paramiko.Channel) -> None:
        """Called from paramiko's transport thread: hand the work to a thread."""
        with self._lock:
            if self.closed:
                channel.close()
                return
            self._channels.add(channel)
        threading.Thread(target=self._serve, args=(channel,), daemon=True,
                         name=f"forward-{self.owner.host}-{self.remote_port}").start()

    def _serve(self, channel: paramiko.Channel) -> None:
        try:
            sock = socket.create_connection((self.local_host, self.local_port), timeout=10)
        except OSError as error:
            self.owner.output.detail(
                f"forward :{self.remote_port} → {self.local_host}:{self.local_port} failed: {error}",
                host=self.owner.host,
            )
            channel.close()
        else:
            sock.settimeout(None)
            _pump(channel, sock)
        finally:
            with self._lock:
                self._channels.discard(channel)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            channels = list(self._channels)
        self.owner._cancel_forward(self)
        for channel in channels:
            channel.close()


# ------------------------------------------------------------------------------ the transport


class _NoSftp(Exception):
    """The host has no SFTP subsystem; fall back to commands."""


class _LineSplitter:
    def __init__(self, stream: str, sink: OutputSink) -> None:
        self.stream = stream
        self.sink = sink
        self.pending = b""

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.sink(self.stream, line.decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        if self.pending:
            self.sink(self.stream, self.pending.decode("utf-8", "replace").rstrip("\r"))
            self.pending = b""


def _sftp_path(remote_path: str) -> str:
    """SFTP does not expand ``~``; it starts in the home directory, so strip it."""
    if remote_path == "~":
        return "."
    if remote_path.startswith("~/"):
        return remote_path[2:] or "."
    return remote_path


class SshTransport(Transport):
    kind = "ssh"

    def __init__(self, host: str, settings: SshSettings, *, hub: JumpHub | None = None,
                 output: Output | None = None) -> None:
        super().__init__(host)
        from shipyard.core.output import Output

        self.settings = settings
        self.hub = hub or JumpHub(output)
        self.output = output or Output()
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._jumped = False
        self._sessions = threading.BoundedSemaphore(MAX_SESSIONS)
        self._sftp_lock = threading.Lock()
        self._sftp: paramiko.SFTPClient | None = None
        self._no_sftp = False
        self._forwards: dict[int, RemoteForward] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<SshTransport {self.host} {self.settings.route}>"

    @property
    def local_port(self) -> int | None:
        """Our end's TCP port of a direct connection (sshd logs it: tests use it to
        find this connection in sshd's log). None through a jump host or proxy."""
        t = self._transport
        sock = t.sock if t is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                port: int = sock.getsockname()[1]
                return port
        return None

    # -- connection ----------------------------------------------------------------------

    def connect(self) -> None:
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._transport = self._open()

    def _open(self) -> paramiko.Transport:
        settings = self.settings
        if self._jumped:
            self.hub.release(settings.jumps)
            self._jumped = False
        sock: paramiko.Channel | None = None
        if settings.jumps:
            through = self.hub.acquire(settings.jumps, self.host)
            self._jumped = True
            try:
                sock = _tunnel(through, settings, self.host, settings.jumps[-1])
            except BaseException:
                self.hub.release(settings.jumps)
                self._jumped = False
                raise
        try:
            return open_connection(settings, self.host, sock=sock, output=self.output)
        except BaseException:
            if self._jumped:
                self.hub.release(settings.jumps)
                self._jumped = False
            raise

    def _active(self) -> paramiko.Transport:
        """The live paramiko Transport, reconnecting once if the connection dropped."""
        with self._lock:
            if self._closed:
                raise HostError(self.host, "the SSH connection was already closed")
            if self._transport is None or not self._transport.is_active():
                if self._transport is not None:
                    self.output.detail("ssh: connection lost, reconnecting", host=self.host)
                    self._sftp = None
                    self._forwards.clear()
                self._transport = self._open()
            return self._transport

    def _lost(self, what: str, error: BaseException) -> HostUnreachable:
        reason = _one_line(error) or type(error).__name__
        return HostUnreachable(self.host, f"connection to {self.settings.address} lost while {what}: {reason}")

    def _session(self) -> paramiko.Channel:
        reconnected = False
        busy = 0
        while True:
            t = self._active()
            try:
                channel = t.open_session(timeout=self.settings.connect_timeout)
            except paramiko.ChannelException as error:
                # The server's MaxSessions is reached, usually because it has not yet
                # freed sessions we just closed: wait for it rather than fail.
                if busy < SESSION_RETRIES:
                    busy += 1
                    time.sleep(min(0.02 * busy, 0.5))
                    continue
                raise HostError(self.host, f"the server refused a new session: {_one_line(error.text)}") from error
            except (OSError, EOFError, paramiko.SSHException) as error:
                if not reconnected and not t.is_active():
                    reconnected = True  # the connection died under us: reconnect once
                    continue
                raise self._lost("opening a session", error) from error
            if self.settings.forward_agent and os.environ.get("SSH_AUTH_SOCK"):
                with contextlib.suppress(Exception):
                    paramiko.agent.AgentRequestHandler(channel)
            return channel

    # -- commands --------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        if not argv:
            raise PluginError("ssh transport: run() needs a command")
        command = remote_command(argv)
        self.output.detail(f"$ {command}", host=self.host)
        status, out, err = self._exec(command, argv, stdin=stdin, on_output=on_output, timeout=timeout)
        return CommandResult(
            host=self.host,
            argv=tuple(argv),
            exit_status=status,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
        )

    def _exec(
        self,
        command: str,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._sessions:
            channel = self._session()
            writer: threading.Thread | None = None
            try:
                try:
                    channel.exec_command(command)
                except (OSError, EOFError, paramiko.SSHException) as error:
                    raise self._lost(f"starting `{argv[0]}`", error) from error
                writer = self._send_stdin(channel, stdin)
                out, err = self._collect(channel, on_output, deadline, argv, timeout)
                status = channel.recv_exit_status()
                if status == -1:
                    if self._transport is not None and not self._transport.is_active():
                        raise self._lost(f"running `{argv[0]}`", EOFError("connection closed"))
                    status = 255  # killed by a signal: no exit status was sent
                return status, out, err
            finally:
                channel.close()
                if writer is not None:
                    writer.join()

    @staticmethod
    def _send_stdin(channel: paramiko.Channel, stdin: bytes | None) -> threading.Thread | None:
        def send() -> None:
            try:
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the command exited (or the channel closed) before reading it all

        if stdin is None or len(stdin) <= INLINE_STDIN:
            send()
            return None
        thread = threading.Thread(target=send, daemon=True, name="ssh-stdin")
        thread.start()
        return thread

    def _collect(
        self,
        channel: paramiko.Channel,
        on_output: OutputSink | None,
        deadline: float | None,
        argv: Sequence[str],
        timeout: float | None,
    ) -> tuple[bytes, bytes]:
        out: list[bytes] = []
        err: list[bytes] = []
        out_lines = _LineSplitter("stdout", on_output) if on_output else None
        err_lines = _LineSplitter("stderr", on_output) if on_output else None
        fd = channel.fileno()
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            select.select([fd], [], [], wait)
            while channel.recv_ready():
                data = channel.recv(CHUNK)
                if not data:
                    break
                out.append(data)
                if out_lines:
                    out_lines.feed(data)
            while channel.recv_stderr_ready():
                data = channel.recv_stderr(CHUNK)
                if not data:
                    break
                err.append(data)
                if err_lines:
                    err_lines.feed(data)
            if (channel.eof_received or channel.closed) and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if deadline is not None and time.monotonic() >= deadline:
                channel.close()
                raise HostError(self.host, f"`{argv[0]}` did not finish within {timeout:g}s")
        for splitter in (out_lines, err_lines):
            if splitter:
                splitter.flush()
        return b"".join(out), b"".join(err)

    # -- files -----------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        """The connection's SFTP session (call with _sftp_lock held)."""
        if self._no_sftp:
            raise _NoSftp
        t = self._active()
        if self._sftp is not None and self._sftp.get_channel() is not None:
            channel = self._sftp.get_channel()
            if channel is not None and not channel.closed:
                return self._sftp
        try:
            sftp = paramiko.SFTPClient.from_transport(t)
        except paramiko.SSHException as error:
            if not t.is_active():
                raise self._lost("opening SFTP", error) from error
            self._no_sftp = True
            self.output.detail(f"ssh: no SFTP ({error}); using commands for files", host=self.host)
            raise _NoSftp from error
        except (OSError, EOFError) as error:
            raise self._lost("opening SFTP", error) from error
        if sftp is None:
            self._no_sftp = True
            raise _NoSftp
        self._sftp = sftp
        return sftp

    def upload(self, content: bytes | Path, remote_path: str, *, mode: int = 0o644) -> None:
        self.output.detail(f"upload {remote_path} (mode {mode:04o})", host=self.host)
        path = _sftp_path(remote_path)
        try:
            with self._sftp_lock:
                sftp = self._sftp_client()
                self._sftp_upload(sftp, content, path, mode)
            return
        except _NoSftp:
            pass
        except OSError as error:
            raise HostError(self.host, f"cannot upload {remote_path}: {_one_line(error.strerror or error)}") from error
        except (EOFError, paramiko.SSHException) as error:
            raise self._lost(f"uploading {remote_path}", error) from error
        data = content.read_bytes() if isinstance(content, Path) else content
        script = (
            'umask 077 && t="$1.shipyard-$$" && cat >"$t" && chmod "$2" "$t" && mv -f "$t" "$1" '
            '|| { rm -f "$t"; exit 1; }'
        )
        argv = ["sh", "-c", script, "sh", path, f"{mode:04o}"]
        status, _out, err = self._exec(remote_command(argv), argv, stdin=data)
        if status != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()
            raise HostError(self.host, f"cannot upload {remote_path}: {tail[-1].strip() if tail else f'exit {status}'}")

    @staticmethod
    def _sftp_upload(sftp: paramiko.SFTPClient, content: bytes | Path, path: str, mode: int) -> None:
        directory, name = posixpath.split(path)
        temp = posixpath.join(directory, f".{name}.shipyard-{uuid.uuid4().hex[:8]}")
        try:
            with sftp.open(temp, "wb") as handle:
                # The file is empty until it has its final mode: secrets are never
                # readable by others, not even for a moment.
                handle.chmod(mode)
                handle.set_pipelined(True)
                if isinstance(content, Path):
                    with content.open("rb") as source:
                        while chunk := source.read(CHUNK):
                            handle.write(chunk)
                else:
                    handle.write(content)
            try:
                sftp.posix_rename(temp, path)
            except OSError:
                # No posix-rename extension: plain SFTP rename refuses to overwrite.
                with contextlib.suppress(OSError):
                    sftp.remove(path)
                sftp.rename(temp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                sftp.remove(temp)
            raise

    def download(self, remote_path: str) -> bytes:
        self.output.detail(f"download {remote_path}", host=self.host)
        path = _sftp_path(remote_path)
        try:
            with self._sftp_lock:
                sftp = self._sftp_client()
                with sftp.open(path, "rb") as handle:
                    handle.prefetch()
                    return handle.read()
        except _NoSftp:
            pass
        except OSError as error:
            raise HostError(self.host, f"cannot download {remote_path}: {_one_line(error.strerror or error)}") from error
        except (EOFError, paramiko.SSHException) as error:
            raise self._lost(f"downloading {remote_path}", error) from error
        argv = ["cat", "--", path]
        status, out, err = self._exec(remote_command(argv), argv)
        if status != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()
            raise HostError(self.host, f"cannot download {remote_path}: {tail[-1] if tail else f'exit {status}'}")
        return out

    # -- port forwarding -------------------------------------------------------------------

    def forward_remote_port(self, remote_port: int, local_host: str, local_port: int) -> RemoteForward:
        t = self._active()
        with self._lock:
            try:
                port = t.request_port_forward(FORWARD_BIND, remote_port, handler=self._on_forwarded)
            except paramiko.SSHException as error:
                if not t.is_active():
                    raise self._lost(f"forwarding port {remote_port}", error) from error
                raise HostError(
                    self.host,
                    f"the server refused to forward port {remote_port} (in use, or AllowTcpForwarding no?)",
                ) from error
            forward = RemoteForward(self, port, local_host, local_port)
            self._forwards[port] = forward
        self.output.detail(f"forwarding {FORWARD_BIND}:{port} on the host to {local_host}:{local_port}", host=self.host)
        return forward

    def _on_forwarded(self, channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
        forward = self._forwards.get(server[1])
        if forward is None:
            channel.close()
            return
        forward.accept(channel)

    def _cancel_forward(self, forward: RemoteForward) -> None:
        with self._lock:
            if self._forwards.get(forward.remote_port) is not forward:
                return
            del self._forwards[forward.remote_port]
            t = self._transport
        if t is not None and t.is_active():
            # Not t.cancel_port_forward(): it also drops the handler of every other forward.
            with contextlib.suppress(Exception):
                t.global_request("cancel-tcpip-forward", (FORWARD_BIND, forward.remote_port), wait=True)

    # -- interactive -------------------------------------------------------------------------

    def interactive(self, argv: Sequence[str]) -> int:
        ssh = shutil.which("ssh")
        if ssh is None:
            raise PluginError("interactive commands need the OpenSSH client (`ssh`) on this machine")
        settings = self.settings
        with tempfile.TemporaryDirectory(prefix="shipyard-ssh-") as tmp:
            extra_keys = []
            for index, (_name, text) in enumerate(settings.key_data):
                key_path = Path(tmp) / f"key_data_{index}"
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(text.strip() + "\n")
                extra_keys.append(str(key_path))
            config_file = None
            if len(settings.config_files) > 1 and not settings.default_config:
                config_file = str(Path(tmp) / "ssh_config")
                Path(config_file).write_text(include_config_text(settings.config_files))
            args = interactive_argv(settings, argv, config_file=config_file, extra_keys=extra_keys, ssh_binary=ssh)
            self.output.detail(f"$ {shlex.join(args)}", host=self.host)
            return subprocess.call(args)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            forwards = list(self._forwards.values())
            sftp, self._sftp = self._sftp, None
            t, self._transport = self._transport, None
        for forward in forwards:
            forward.close()
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if t is not None:
            t.close()
        if self._jumped:
            self._jumped = False
            self.hub.release(self.settings.jumps)


__all__ = ["RemoteForward", "SshTransport", "connect", "key_from_text", "open_connection"]
