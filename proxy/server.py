"""``run``: the proxy process — listeners, control socket, state restore, graceful shutdown.

One process, one event loop (uvloop when installed).  Everything that routes requests lives
in this loop, so a deploy's switch is seen atomically by every connection; there are no
worker processes to keep in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import paths
from .acme import CertificateManager
from .commands import CommandError, Commands
from .downstream import ClientConnection
from .error_pages import ErrorPages
from .exchange import Exchange
from .godur import SECOND, DurationError, parse_duration
from .logs import JsonLogger
from .metrics import Metrics, start_exposition_server
from .outbox import OUTBOX
from .router import Router
from .state import StateStore
from .tls import AlpnSwitch, TlsListener, alt_svc_header, server_context
from .upstream import LIVE_TARGETS

if TYPE_CHECKING:
    from .http2 import Http2Connection
    from .http3 import Http3Connection

MAX_COMMAND_BYTES = 16 << 20


@dataclass
class ServerConfig:
    http_port: int = 80
    https_port: int = 443
    metrics_port: int = 0
    debug: bool = False
    http3: bool = False


@dataclass
class Tuning:
    """Client-side limits kamal-proxy doesn't have; set by environment variables."""

    header_timeout: float = 30.0
    idle_timeout: float = 0.0
    max_header_bytes: int = 64 * 1024
    shutdown_timeout: float = 10.0

    @classmethod
    def from_environment(cls, env: dict[str, str] | os._Environ[str]) -> Tuning:
        tuning = cls()

        def duration(key: str, default: float) -> float:
            raw = env.get(key)
            if raw is None:
                return default
            try:
                return parse_duration(raw) / SECOND
            except DurationError:
                return default

        tuning.header_timeout = duration("SHIPYARD_PROXY_HEADER_TIMEOUT", tuning.header_timeout)
        tuning.idle_timeout = duration("SHIPYARD_PROXY_IDLE_TIMEOUT", tuning.idle_timeout)
        tuning.shutdown_timeout = duration(
            "SHIPYARD_PROXY_SHUTDOWN_TIMEOUT", tuning.shutdown_timeout
        )
        raw_limit = env.get("SHIPYARD_PROXY_MAX_HEADER_BYTES", "")
        if raw_limit.isdigit() and int(raw_limit) > 0:
            tuning.max_header_bytes = int(raw_limit)
        return tuning


class ProxyServer:
    def __init__(self, config: ServerConfig, logger: JsonLogger, data_dir: str) -> None:
        self.config = config
        self.logger = logger
        self.router = Router()
        self.metrics = Metrics(enabled=config.metrics_port != 0)
        # Request log lines are appended here; written in batches (exchange.LOG_BATCH) and
        # by the sweep every 50 ms.
        self.log_lines = logger.pending
        self.error_pages = ErrorPages.builtin()
        self.connections: set[ClientConnection | Http2Connection | Http3Connection] = set()
        # The Alt-Svc header line of TCP HTTPS responses (empty without --http3).
        self.alt_svc = alt_svc_header(config.https_port) if config.http3 else b""
        # Objects with an ``on_deadline()`` and the monotonic time it is due: one sweep
        # serves the connection timeouts (a slow header read, idle keep-alive), which is far
        # cheaper than creating and cancelling loop timers.  --target-timeout needs no entry
        # here: the sweep checks the targets' in-flight requests.
        self.deadlines: dict[Any, float] = {}
        self.tuning = Tuning.from_environment(os.environ)
        self.shutting_down = False
        self.state = StateStore(paths.state_file_path(data_dir))
        self.certificates = CertificateManager(data_dir, logger)
        self.commands = Commands(self)
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background coroutine, keeping a reference so it isn't garbage-collected."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Listener(Protocol):
    def close(self) -> None: ...


async def _start_http3(proxy: ProxyServer, port: int) -> Listener:
    # Imported with --http3 only: aioquic stays out of a proxy that does not use it.
    from .http3 import start_http3

    try:
        return await start_http3(proxy, port, proxy.router, proxy.certificates)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise StartupError(f"listen udp :{port}: bind: {reason}") from None


def _http2_connection(proxy: ProxyServer, port: int) -> asyncio.Protocol:
    # Imported on the first HTTP/2 client: the h2 library stays out of a proxy that has none.
    from .http2 import Http2Connection

    return Http2Connection(proxy, port)


class StartupError(Exception):
    pass


def _listen_socket(port: int) -> socket.socket:
    """A dual-stack listening socket on every interface, like Go's ``:port``."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[Any, ...] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise StartupError(f"listen tcp :{port}: bind: {reason}") from None
    sock.setblocking(False)
    return sock


class ControlServer:
    """JSON lines over a unix socket: ``{"method", "params"}`` → ``{"result"}|{"error"}``."""

    def __init__(self, proxy: ProxyServer, path: str) -> None:
        self.proxy = proxy
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(
                self._handle, path=self.path, limit=MAX_COMMAND_BYTES
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply: dict[str, Any]
            try:
                request = json.loads(line)
                method = request["method"]
                params = request.get("params") or {}
                if not isinstance(method, str) or not isinstance(params, dict):
                    raise ValueError("malformed command")
                reply = {"result": await self.proxy.commands.dispatch(method, params)}
            except CommandError as exc:
                reply = {"error": str(exc)}
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"error": f"malformed command: {exc}"}
            except Exception as exc:  # a bug must not take the control socket down
                self.proxy.logger.error("Command failed", error=repr(exc))
                reply = {"error": str(exc) or type(exc).__name__}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


async def _run(config: ServerConfig, logger: JsonLogger) -> int:
    loop = asyncio.get_running_loop()
    OUTBOX.attach(loop)
    proxy = ProxyServer(config, logger, paths.data_dir())
    proxy.commands.restore()

    stop_metrics: Callable[[], None] | None = None
    servers: list[Listener] = []
    control = ControlServer(proxy, paths.socket_path())
    try:
        if config.metrics_port:
            try:
                stop_metrics = start_exposition_server(proxy.metrics, config.metrics_port)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise StartupError(f"listen tcp :{config.metrics_port}: bind: {reason}") from None
            logger.info("Metrics enabled", port=config.metrics_port)
        http_sock = _listen_socket(config.http_port)
        servers.append(
            await loop.create_server(
                lambda: ClientConnection(proxy, "http", config.http_port), sock=http_sock
            )
        )
        https = TlsListener(
            _listen_socket(config.https_port),
            server_context(proxy.router, logger, proxy.certificates),
            proxy.router,
            proxy.certificates,
            logger,
            lambda: AlpnSwitch(
                lambda: ClientConnection(proxy, "https", config.https_port),
                lambda: _http2_connection(proxy, config.https_port),
            ),
        )
        https.start()
        servers.append(https)
        if config.http3:
            servers.append(await _start_http3(proxy, config.https_port))
        await control.start()
    except StartupError as exc:
        for server in servers:
            server.close()
        if stop_metrics is not None:
            stop_metrics()
        logger.flush()
        sys.stderr.write(f"Error: {exc}\n")
        return 1

    # Per-request objects are acyclic and freed by reference counting; collect the cyclic
    # garbage less often, and move start-up objects out of the collector's way.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    logger.info("Server started", http=config.http_port, https=config.https_port)
    sweeper = asyncio.ensure_future(_sweep_deadlines(proxy))

    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    await _shutdown(proxy, servers, control)
    sweeper.cancel()
    if stop_metrics is not None:
        stop_metrics()
    logger.info("Server stopped")
    logger.flush()
    return 0


SWEEP_INTERVAL = 0.05


async def _sweep_deadlines(proxy: ProxyServer) -> None:
    """Every 50 ms: write the batched request logs, fire due timeouts."""
    deadlines = proxy.deadlines
    logger = proxy.logger
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        logger.flush()
        try:
            _expire_target_timeouts()
        except Exception as exc:  # the sweep must survive anything
            logger.error("Timeout handling failed", error=repr(exc))
        if not deadlines:
            continue
        now = time.monotonic()
        expired = [item for item, due in list(deadlines.items()) if due <= now]
        for item in expired:
            if deadlines.pop(item, None) is not None:
                try:
                    item.on_deadline()
                except Exception as exc:  # one broken connection must not stop the sweep
                    logger.error("Timeout handling failed", error=repr(exc))


def _expire_target_timeouts() -> None:
    """504 for requests that have waited longer than --target-timeout for a response head."""
    now = time.perf_counter_ns()
    for target in list(LIVE_TARGETS):
        if not target.inflight:
            continue
        for exchange in list(target.inflight):
            if (
                isinstance(exchange, Exchange)
                and exchange.waiting
                and now - exchange.wait_from >= exchange.timeout_ns
                and not exchange.finished
            ):
                exchange.on_deadline()


async def _shutdown(proxy: ProxyServer, servers: list[Listener], control: ControlServer) -> None:
    """Stop accepting, close idle connections, let in-flight requests finish (bounded)."""
    proxy.shutting_down = True
    for server in servers:
        server.close()
    await control.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + proxy.tuning.shutdown_timeout
    while True:
        busy = [c for c in list(proxy.connections) if not c.close_if_idle()]
        if not busy:
            break
        if loop.time() >= deadline:
            proxy.logger.warn("Closing active connections", count=len(busy))
            for conn in busy:
                conn.force_close()
            break
        await asyncio.sleep(0.05)
    for service in list(proxy.router.services.values()):
        for balancer in service.all_balancers():
            balancer.dispose()
    await asyncio.sleep(0)


def serve(config: ServerConfig) -> int:
    logger = JsonLogger(fd=sys.stdout.fileno(), debug=config.debug)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(_run(config, logger))
    return uvloop.run(_run(config, logger))
