"""Test harness for black-box tests of shipyard-proxy.

Everything here talks to real processes over loopback: the proxy is started with its CLI
(``python -m shipyard.proxy.cli run``), driven with its CLI, and reached with plain HTTP
clients.  Upstreams are small threaded HTTP servers written for these tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

CLI = [sys.executable, "-m", "shipyard.proxy.cli"]
WAIT = 15.0  # generous: tests wait for conditions, never assert on elapsed time
UNREACHABLE_ACME_DIRECTORY = "https://127.0.0.1:9/directory"  # the discard port: refused


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# --- HTTP client helpers ---------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    host: str | None = "example.com",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = WAIT,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Response:
    if tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=tls
        )
        if server_hostname is not None:
            # http.client uses the host for SNI; route SNI separately from the address.
            conn.host = server_hostname
            conn._create_connection = lambda address, *a, **kw: socket.create_connection(  # type: ignore[attr-defined]
                ("127.0.0.1", port), *a, **kw
            )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = {k.lower() for k in (headers or {})}
        if host is not None and "host" not in sent:
            conn.putheader("Host", host)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None and "content-length" not in sent and "transfer-encoding" not in sent:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)
    finally:
        conn.close()


def read_until(
    sock: socket.socket,
    done: bytes | Callable[[bytes], bool] | None = None,
    received: bytes = b"",
) -> bytes:
    """Read from ``sock`` until ``done`` holds (a marker that has arrived, or a test of
    everything read so far) or the peer closes; with ``done=None``, until the peer closes."""

    def finished(data: bytes) -> bool:
        if done is None:
            return False
        if isinstance(done, bytes):
            return done in data
        return done(data)

    while not finished(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def raw_exchange(port: int, payload: bytes, timeout: float = WAIT, read_all: bool = True) -> bytes:
    """Send raw bytes and return whatever comes back until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if not read_all:
                break
        return b"".join(chunks)


def status_of(raw: bytes) -> int:
    line = raw.split(b"\r\n", 1)[0]
    return int(line.split()[1])


# --- a tiny WebSocket client -----------------------------------------------------------------


class WebSocketClient:
    def __init__(self, port: int, path: str = "/ws", host: str = "example.com") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.handshake = head
        self.status = status_of(head) if head else 0

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0x81])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        self.sock.sendall(header + mask + masked)

    def recv(self) -> str | None:
        """The next text frame, or None when the connection is closed."""
        try:
            first = self._read(2)
        except (ConnectionError, OSError):
            return None
        if first is None:
            return None
        opcode = first[0] & 0x0F
        length = first[1] & 0x7F
        if length == 126:
            ext = self._read(2)
            assert ext is not None
            length = struct.unpack("!H", ext)[0]
        data = self._read(length) if length else b""
        if opcode == 0x8 or data is None:
            return None
        return data.decode()

    def _read(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- the upstream test server ------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # the raw request target, query included
    headers: dict[str, str]
    header_items: list[tuple[str, str]]
    body: bytes


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UpstreamServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # Every method goes through the same dispatcher.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_PURGE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        server = self.server
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = url.path
        body = self._read_body()
        if route == server.health_path:
            server.health_checks.append(dict(self.headers.items()))
            status = server.health_status
            self._send(status, b"ok" if status < 300 else b"unhealthy")
            return
        if self.headers.get("Upgrade", "").lower() == "websocket":
            server.record(self, body)
            self._websocket()
            return
        server.record(self, body)
        handler = getattr(self, "route_" + route.strip("/").split("/")[0], None)
        if handler is not None:
            handler(query, body)
            return
        self._send(200, server.name.encode(), {"X-Upstream": server.name, **server.extra_headers})

    # --- routes ---------------------------------------------------------------------------

    def route_echo(self, query: dict[str, str], body: bytes) -> None:
        payload = {
            "name": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode("latin-1"),
        }
        self._send(200, json.dumps(payload).encode(), content_type="application/json")

    def route_slow(self, query: dict[str, str], body: bytes) -> None:
        self.server.slow_started.set()
        released = self.server.release.wait(float(query.get("max", "30")))
        del released
        self._send(200, f"{self.server.name} slow done".encode())

    def route_sleep(self, query: dict[str, str], body: bytes) -> None:
        time.sleep(float(query.get("s", "1")))
        self._send(200, b"slept")

    def route_status(self, query: dict[str, str], body: bytes) -> None:
        code = int(query.get("code", "200"))
        self._send(
            code, query.get("body", "").encode(), content_type=query.get("type", "text/plain")
        )

    def route_allow(self, query: dict[str, str], body: bytes) -> None:
        """An on-demand TLS approval endpoint."""
        host = query.get("host", "")
        if host in self.server.allowed_hosts:
            self._send(200, b"ok")
        else:
            self._send(403, f"denied {host}".encode())

    def route_big(self, query: dict[str, str], body: bytes) -> None:
        size = int(query.get("n", "0"))
        self._send(200, b"x" * size)

    def route_headers(self, query: dict[str, str], body: bytes) -> None:
        headers = {k: v for k, v in query.items()}
        self._send(200, b"headers", headers)

    def route_cookies(self, query: dict[str, str], body: bytes) -> None:
        self.send_response(200)
        for cookie in query.get("set", "").split("|"):
            if cookie:
                self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def route_hop(self, query: dict[str, str], body: bytes) -> None:
        self.send_response(200)
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Proxy-Authenticate", "Basic")
        self.send_header("X-Kept", "yes")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"hop")

    def route_chunked(self, query: dict[str, str], body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", query.get("type", "text/plain"))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        parts = query.get("parts", "a,b,c").split(",")
        for i, part in enumerate(parts):
            data = part.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            if i == 0 and query.get("hold"):
                self.server.release.wait(float(query["hold"]))
        self.wfile.write(b"0\r\n\r\n")

    def route_sse(self, query: dict[str, str], body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", query.get("type", "text/event-stream"))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"data: hello\n\n")
        self.wfile.flush()
        self.server.release.wait(float(query.get("max", "30")))
        self.wfile.write(b"data: bye\n\n")
        self.wfile.flush()
        self.close_connection = True

    def route_length(self, query: dict[str, str], body: bytes) -> None:
        """A Content-Length response whose body is written in two parts with a pause."""
        first, second = query.get("first", "hello "), query.get("second", "world")
        self.send_response(int(query.get("code", "200")))
        self.send_header("Content-Length", str(len(first) + len(second)))
        if "location" in query:
            self.send_header("Location", query["location"])
        self.end_headers()
        self.wfile.write(first.encode())
        self.wfile.flush()
        self.server.release.wait(float(query.get("max", "30")))
        self.wfile.write(second.encode())

    def route_eof(self, query: dict[str, str], body: bytes) -> None:
        """No Content-Length and no chunking: the body ends when the connection closes."""
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"until-close")
        self.close_connection = True

    def route_cut(self, query: dict[str, str], body: bytes) -> None:
        """Promise more bytes than are sent, then hang up."""
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"short")
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC11B85").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sock = self.connection
        self.server.websockets.append(sock)
        try:
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                opcode = head[0] & 0x0F
                length = head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self.rfile.read(2))[0]
                mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
                if opcode == 0x8:
                    return
                reply = f"{self.server.name}:{data.decode()}".encode()
                frame = bytes([0x81]) + (
                    bytes([len(reply)])
                    if len(reply) < 126
                    else bytes([126]) + struct.pack("!H", len(reply))
                )
                sock.sendall(frame + reply)
        except OSError:
            return


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), UpstreamHandler)
        self.name = name
        self.health_path = "/up"
        self.health_status = 200
        self.health_checks: list[dict[str, str]] = []
        self.requests: list[Seen] = []
        self.extra_headers: dict[str, str] = {}
        self.allowed_hosts: set[str] = set()  # /allow?host=X answers 200 for these, else 403
        self.release = threading.Event()
        self.slow_started = threading.Event()
        self.websockets: list[socket.socket] = []
        self.open_sockets: set[socket.socket] = set()
        self.stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._lock:
            self.open_sockets.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def record(self, handler: UpstreamHandler, body: bytes) -> None:
        with self._lock:
            self.requests.append(
                Seen(
                    handler.command,
                    handler.path,
                    dict(handler.headers.items()),
                    list(handler.headers.items()),
                    body,
                )
            )

    def last(self) -> Seen:
        wait_until(lambda: self.requests)
        return self.requests[-1]

    def stop(self) -> None:
        """Like stopping a container: no more accepts, and every open connection is cut."""
        if self.stopped:
            return
        self.stopped = True
        self.release.set()
        self.shutdown()
        self.server_close()
        with self._lock:
            sockets = list(self.open_sockets) + list(self.websockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


# --- certificates ---------------------------------------------------------------------------


def write_self_signed(
    folder: Path,
    names: list[str],
    *,
    days_left: float = 2,
    combined: bool = False,
) -> tuple[str, str]:
    """A self-signed certificate for ``names`` (DNS names, or IP addresses), valid since
    60 days ago for ``days_left`` more days.  Returns the certificate and key paths: two PEM
    files, or with ``combined`` one file holding the key then the certificate (autocert's
    cache layout, "EC PRIVATE KEY")."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def alt_name(name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=60))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName([alt_name(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if combined:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        path = folder / names[0]
        path.write_bytes(key_pem + cert_pem)
        return str(path), str(path)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    return str(folder / "cert.pem"), str(folder / "key.pem")


# --- the proxy process -------------------------------------------------------------------------


@dataclass
class Proxy:
    workdir: Path
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    metrics_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "proxy.sock"

    @property
    def state_file(self) -> Path:
        return self.home / ".config" / "kamal-proxy" / "kamal-proxy.state"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAMAL_PROXY", "SHIPYARD_PROXY"))
        }
        env.update(
            HOME=str(self.home),
            KAMAL_PROXY_SOCKET=str(self.socket_path),
            PYTHONUNBUFFERED="1",
            SHIPYARD_PROXY_SHUTDOWN_TIMEOUT="5s",
            # Automatic TLS must never reach a real CA from a test: nothing listens here.
            SHIPYARD_PROXY_ACME_DIRECTORY=UNREACHABLE_ACME_DIRECTORY,
        )
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> Proxy:
        self.home.mkdir(parents=True, exist_ok=True)
        self.lines = []
        args = [*CLI, "run", f"--http-port={self.http_port}", f"--https-port={self.https_port}"]
        if self.metrics_port:
            args.append(f"--metrics-port={self.metrics_port}")
        args += self.extra_args
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(), cwd=self.workdir
        )
        threading.Thread(
            target=self._pump, args=(self.process.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.process.stderr, self.stderr_lines), daemon=True
        ).start()
        if wait:
            self.wait_for_log("Server started")
        return self

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            sink.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def restart(self) -> Proxy:
        self.stop()
        return self.start()

    # --- logs ---------------------------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def log_messages(self) -> list[str]:
        return [e.get("msg", "") for e in self.logs()]

    def wait_for_log(self, msg: str, **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for entry in self.logs():
                if entry.get("msg") == msg and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"proxy exited ({self.process.returncode}): {self.stderr_lines[-20:]}"
                )
            return None

        return wait_until(find)  # type: ignore[no-any-return]

    def request_logs(self) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("msg") == "Request"]

    # --- CLI ----------------------------------------------------------------------------

    def cli(
        self,
        *args: str,
        check: bool = False,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            env={**self.env(), **(env or {})},
            timeout=timeout,
            cwd=self.workdir,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed: {result.stderr}")
        return result

    def deploy(
        self, service: str, *targets: str, check: bool = True, **flags: Any
    ) -> subprocess.CompletedProcess[str]:
        args = ["deploy", service, *[f"--target={t}" for t in targets]]
        flags.setdefault("health_check_interval", "100ms")
        flags.setdefault("deploy_timeout", "5s")
        args += flag_args(flags)
        return self.cli(*args, check=check)

    def get(self, path: str = "/", **kwargs: Any) -> Response:
        return request(self.http_port, path, **kwargs)


def flag_args(flags: dict[str, Any]) -> list[str]:
    """``health_check_path="/x"`` → ``--health-check-path=/x``; True → ``--flag``; lists repeat."""
    args = []
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            args.append(name)
        elif value is False:
            args.append(f"{name}=false")
        elif isinstance(value, list | tuple):
            args += [f"{name}={v}" for v in value]
        else:
            args.append(f"{name}={value}")
    return args


@contextlib.contextmanager
def running(*servers: UpstreamServer) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def fnv1a_32(data: bytes) -> int:
    """Reference FNV-1a (32 bit), written independently of the proxy's copy."""
    h = 2166136261
    for byte in data:
        h = ((h ^ byte) * 16777619) % (1 << 32)
    return h
