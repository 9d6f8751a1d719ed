"""The built-in local transport: the host ``localhost`` is this machine, no SSH involved.

Commands run as subprocesses (argument lists, no shell) in ``$HOME``, as a remote
command would run in the login user's home directory; relative paths for upload and
download are relative to ``$HOME`` too. A "remote" port forward is already local: when
both ports are the same there is nothing to do; otherwise a small relay listens on the
loopback port.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shipyard.core import hookimpl
from shipyard.core.errors import HostError, PluginError
from shipyard.core.transport import CommandResult, OutputSink, Transport

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.output import Output

#: Host names the local transport answers for.
LOCAL_HOSTS = frozenset({"localhost"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
CHUNK = 65536


@hookimpl
def shipyard_transport(ctx: Context, host: str) -> Transport | None:
    """``localhost`` runs here, without SSH; every other host is someone else's."""
    if host not in LOCAL_HOSTS:
        return None
    return LocalTransport(host, output=ctx.output)


class LocalTransport(Transport):
    kind = "local"

    def __init__(self, host: str = "localhost", *, home: Path | None = None, output: Output | None = None) -> None:
        super().__init__(host)
        self.home = home if home is not None else Path(os.environ.get("HOME") or Path.home())
        self.output = output

    def __repr__(self) -> str:
        return f"<LocalTransport {self.host} home={self.home}>"

    def _detail(self, message: str) -> None:
        if self.output is not None:
            self.output.detail(message, host=self.host)

    def path(self, remote_path: str) -> Path:
        """Where ``remote_path`` is here: ``~`` and relative paths are under $HOME."""
        if remote_path == "~":
            return self.home
        if remote_path.startswith("~/"):
            return self.home / remote_path[2:]
        path = Path(remote_path)
        return path if path.is_absolute() else self.home / path

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
            raise PluginError("local transport: run() needs a command")
        args = [str(a) for a in argv]
        self._detail("$ " + shlex.join(args))
        try:
            proc = subprocess.Popen(
                args,
                cwd=self.home,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            return self._not_run(args, 127, f"{args[0]}: command not found")
        except PermissionError:
            return self._not_run(args, 126, f"{args[0]}: permission denied")
        except OSError as error:
            return self._not_run(args, 126, f"{args[0]}: {error.strerror or error}")

        lock = threading.Lock()
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

        def read(stream: str, pipe: IO[bytes]) -> None:
            for line in iter(pipe.readline, b""):
                chunks[stream].append(line)
                if on_output is not None:
                    text = line.decode("utf-8", "replace").rstrip("\n").rstrip("\r")
                    with lock:
                        on_output(stream, text)
            pipe.close()

        def write() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.write(stdin or b"")
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.close()

        assert proc.stdout is not None and proc.stderr is not None
        threads = [
            threading.Thread(target=read, args=("stdout", proc.stdout), daemon=True),
            threading.Thread(target=read, args=("stderr", proc.stderr), daemon=True),
        ]
        if stdin is not None:
            threads.append(threading.Thread(target=write, daemon=True))
        for thread in threads:
            thread.start()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            for thread in threads:
                thread.join()
            raise HostError(self.host, f"`{args[0]}` did not finish within {timeout:g}s") from None
        for thread in threads:
            thread.join()
        return CommandResult(
            host=self.host,
            argv=tuple(args),
            exit_status=status if status >= 0 else 128 - status,  # killed by signal N → 128+N
            stdout=b"".join(chunks["stdout"]).decode("utf-8", "replace"),
            stderr=b"".join(chunks["stderr"]).decode("utf-8", "replace"),
        )

    def _not_run(self, argv: list[str], status: int, message: str) -> CommandResult:
        """What a shell would answer for a command that cannot be started."""
        return CommandResult(self.host, tuple(argv), status, "", message + "\n")

    # -- files -----------------------------------------------------------------------------

    def upload(self, content: bytes | Path, remote_path: str, *, mode: int = 0o644) -> None:
        target = self.path(remote_path)
        self._detail(f"upload {target} (mode {mode:04o})")
        try:
            # mkstemp creates the file 0600; it gets its final mode before any byte is
            # written, and replaces the target in one step.
            fd, temp = tempfile.mkstemp(prefix=f".{target.name}.shipyard-", dir=target.parent)
        except OSError as error:
            raise HostError(self.host, f"cannot upload {remote_path}: {error.strerror or error}") from error
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                if isinstance(content, Path):
                    with content.open("rb") as source:
                        while chunk := source.read(CHUNK):
                            handle.write(chunk)
                else:
                    handle.write(content)
            os.replace(temp, target)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise HostError(self.host, f"cannot upload {remote_path}: {error.strerror or error}") from error

    def download(self, remote_path: str) -> bytes:
        source = self.path(remote_path)
        self._detail(f"download {source}")
        try:
            return source.read_bytes()
        except OSError as error:
            raise HostError(self.host, f"cannot download {remote_path}: {error.strerror or error}") from error

    # -- port forwarding and interactive -------------------------------------------------------

    def forward_remote_port(self, remote_port: int, local_host: str, local_port: int) -> LocalForward:
        """The "remote" loopback is our loopback: nothing to do when the ports match."""
        if remote_port == local_port and local_host in LOOPBACK:
            return LocalForward(remote_port)
        relay = LocalRelay(remote_port, local_host, local_port)
        relay.start()
        return relay

    def interactive(self, argv: Sequence[str]) -> int:
        args = [str(a) for a in argv]
        self._detail("$ " + shlex.join(args))
        try:
            return subprocess.call(args, cwd=self.home)
        except FileNotFoundError:
            raise HostError(self.host, f"{args[0]}: command not found") from None


class LocalForward:
    """A forward that needs no work: the port is already where it should be."""

    def __init__(self, remote_port: int) -> None:
        self.remote_port = remote_port

    def close(self) -> None:
        pass


class LocalRelay(LocalForward):
    """Listens on ``127.0.0.1:remote_port`` and relays connections to
    ``local_host:local_port`` (only needed when the two ports differ)."""

    def __init__(self, remote_port: int, local_host: str, local_port: int) -> None:
        super().__init__(remote_port)
        self.local_host = local_host
        self.local_port = local_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            self._listener.bind(("127.0.0.1", self.remote_port))
            self._listener.listen(16)
        except OSError as error:
            self._listener.close()
            raise HostError("localhost", f"cannot listen on 127.0.0.1:{self.remote_port}: {error.strerror}") from error
        self.remote_port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.remote_port}").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.5)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.local_host, self.local_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        try:
            _pump_sockets(client, upstream)
        finally:
            with self._lock:
                self._sockets.difference_update((client, upstream))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        # shutdown() stops listening at once, even while the accept thread is in select().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pump_sockets(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have finished sending."""
    peer = {a: b, b: a}
    sources = [a, b]
    try:
        while sources:
            readable, _, _ = select.select(sources, [], [])
            for sock in readable:
                data = sock.recv(CHUNK)
                if data:
                    peer[sock].sendall(data)
                else:
                    sources.remove(sock)
                    with contextlib.suppress(OSError):
                        peer[sock].shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass
    finally:
        a.close()
        b.close()
