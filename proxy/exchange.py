"""One request/response exchange: route it, pick a target, forward it, stream the answer back.

This is the hot path.  It is written as callbacks (no task per request) and works on bytes:
the upstream request head is assembled from header pieces with one join, each upstream
read is sent to the client with one ``write`` of the joined pieces (uvloop's
``writelines`` issues one send per piece), and the access-log line is formatted
without ``json.dumps``.  A task is only created for the rare slow paths: opening a new
upstream connection, waiting while a service is paused.
"""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .bodybuffer import BodyTooLarge, SpillBuffer
from .controllers import EXPIRED, PAUSED, REJECTED_STOPPED, RUNNING, STOPPED
from .error_pages import CONTENT_TYPE, reason_phrase
from .logs import escape
from .router import request_host
from .tunnel import Tunnel
from .upstream import UpstreamConnection

if TYPE_CHECKING:
    from .balancer import LoadBalancer
    from .downstream import ClientConnection
    from .server import ProxyServer
    from .service import Service
    from .upstream import Target

# Request headers handled by the proxy rather than copied verbatim (value = what to do).
_KEEP, _DROP = 0, 1
_REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": 2,
    b"content-length": 3,
    b"transfer-encoding": _DROP,
    b"connection": 4,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"proxy-authenticate": _DROP,
    b"proxy-authorization": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": 5,
    b"forwarded": _DROP,
    b"x-forwarded-for": 6,
    b"x-forwarded-proto": 7,
    b"x-forwarded-host": 8,
    b"x-request-id": 9,
    b"x-request-start": 10,
    b"x-kamal-target": 11,
    b"expect": 12,
    b"cookie": 13,
    b"content-type": 14,
    b"user-agent": 15,
}


_READ_METHODS = frozenset({"GET", "HEAD"})
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (
            status,
            reason_phrase(status).encode("latin-1"),
        )
    return line


_MAX_PENDING_BODY = 256 * 1024

_perf = time.perf_counter
_monotonic = time.monotonic
_time_ns = time.time_ns
_getrandbits = random.getrandbits


class _RequestIds:
    """UUIDv4-shaped request IDs: a random per-process prefix and a counter.

    Unique within the process and cheap (one format per request); they only correlate log
    lines and upstream requests, so they need not be unpredictable.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        h = f"{_getrandbits(128):032x}"
        self._prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:24]}"
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        if self._counter > 0xFFFFFFFF:
            self.reseed()
            self._counter = 1
        return f"{self._prefix}{self._counter:08x}"


new_request_id = _RequestIds().next


def _cookie_value(cookie_header: bytes, name: bytes) -> str | None:
    for part in cookie_header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value.strip().strip(b'"').decode("latin-1")
    return None


def _scope_cookie(value: bytes, prefix: str, host: str) -> bytes:
    """Re-root a Set-Cookie's Path under the service prefix when it belongs to this host."""
    pieces = [p.strip() for p in value.decode("latin-1").split(";")]
    domain = ""
    path = ""
    for piece in pieces[1:]:
        key, _, attr = piece.partition("=")
        if key.strip().lower() == "domain":
            domain = attr.strip().lstrip(".")
        elif key.strip().lower() == "path":
            path = attr.strip()
    if domain and domain != host:
        return value
    trimmed = path.strip("/")
    new_path = prefix.rstrip("/") + ("/" + trimmed if trimmed else "")
    out = [pieces[0]] + [p for p in pieces[1:] if p.partition("=")[0].strip().lower() != "path"]
    out.insert(1, f"Path={new_path}")
    return "; ".join(out).encode("latin-1")


class Exchange:
    # Class-level defaults: a request only pays for the attributes it actually changes
    # (no __slots__, so these act as defaults for every instance).
    upgrade: bytes | None = None
    service: Service | None = None
    balancer: LoadBalancer | None = None
    target: Target | None = None
    upstream: UpstreamConnection | None = None
    prefix = "/"
    status = 0
    finished = False
    head_sent = False
    response_complete = False
    close_after = False
    retried = False
    waiting = False  # registered in proxy.deadlines for --target-timeout
    connecting = False  # an upstream connection was requested (pooled or being opened)
    body_bytes = 0
    body_done = False
    req_buffer: SpillBuffer | None = None
    resp_buffer: SpillBuffer | None = None
    resp_head: list[bytes] = []  # only assigned (never mutated) while shared
    resp_headers: list[tuple[bytes, bytes]] = []
    resp_bytes = 0
    resp_chunked = False
    resp_content_type = b""
    is_read = False
    client_ip_value = b""
    bad_request = False

    def __init__(
        self,
        conn: ClientConnection,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.conn = conn
        self.proxy: ProxyServer = conn.proxy
        self.started = _perf()
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.header_list = headers
        self.out: list[bytes] = []
        self.pending_body: list[bytes] = []

        if url[:1] != b"/" and b"://" in url[:8]:
            # Absolute-form request target: the authority replaces the Host header.
            after_scheme = url.split(b"://", 1)[1]
            authority, slash, rest = after_scheme.partition(b"/")
            url = slash + rest if slash else b"/"
            absolute_host: bytes | None = authority
        else:
            absolute_host = None
        raw_path, _, query = url.partition(b"?")
        self.raw_path = raw_path or b"/"
        self.query = query

        host = b""
        host_count = 0
        content_length = -1
        chunked = False
        cookie = b""
        content_type = b""
        user_agent = b""
        request_id = b""
        request_start = b""
        xff: bytes | None = None
        xfp = b""
        xfh = b""
        kamal_target = b""
        expect = False
        kept: list[bytes] = []
        special = _REQUEST_SPECIAL
        for name, value in headers:
            lname = name.lower()
            code = special.get(lname, _KEEP)
            if code == _KEEP:
                kept.extend((name, b": ", value, b"\r\n"))
                continue
            if code == _DROP:
                if lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                continue
            if code == 2:
                if host_count:
                    self.bad_request = True  # several Host headers: ambiguous routing
                host = value
                host_count += 1
            elif code == 3:
                content_length = int(value) if value.strip().isdigit() else -1
            elif code == 4:
                pass
            elif code == 5:
                self.upgrade = value
            elif code == 6:
                xff = value if xff is None else xff + b", " + value
            elif code == 7:
                xfp = value
            elif code == 8:
                xfh = value
            elif code == 9:
                request_id = value
                kept.extend((name, b": ", value, b"\r\n"))
            elif code == 10:
                request_start = value
                kept.extend((name, b": ", value, b"\r\n"))
            elif code == 11:
                kamal_target = value if not kamal_target else kamal_target + b", " + value
            elif code == 12:
                expect = value.lower() == b"100-continue"
            elif code == 13:
                cookie = value if not cookie else cookie + b"; " + value
                kept.extend((name, b": ", value, b"\r\n"))
            elif code == 14:
                content_type = value
                kept.extend((name, b": ", value, b"\r\n"))
            elif code == 15:
                user_agent = value
                kept.extend((name, b": ", value, b"\r\n"))
        if not upgrade:
            self.upgrade = None
        if absolute_host is not None:
            host = absolute_host
        self.host_raw = host
        self.content_length = content_length
        self.chunked = chunked
        self.cookie = cookie
        self.content_type = content_type
        self.user_agent = user_agent
        self.x_forwarded_for = xff
        self.x_forwarded_proto = xfp
        self.x_forwarded_host = xfh
        self.x_kamal_target = kamal_target
        self.expect_continue = expect
        self.kept_headers = kept
        self.request_id_given = bool(request_id)
        # Kept JSON-escaped (it is only logged, or sent upstream when we generated it).
        self.request_id = (
            escape(request_id.decode("latin-1"))[1:-1] if request_id else new_request_id()
        )
        self.request_start_given = bool(request_start)
        self.request_start = request_start or b"t=%d" % (_time_ns() // 1_000_000)
        path = self.raw_path.decode("latin-1")
        self.path = unquote(path) if "%" in path else path
        self.routed_path = self.path
        self.upstream_path = self.raw_path

    # --- helpers ----------------------------------------------------------------------

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    def header(self, lname: bytes) -> bytes | None:
        for name, value in self.header_list:
            if name.lower() == lname:
                return value
        return None

    def _write(self, data: list[bytes]) -> None:
        transport = self.conn.transport
        if not transport.is_closing():
            transport.write(b"".join(data))

    # --- routing and the service pipeline ---------------------------------------------

    def start(self) -> None:
        proxy = self.proxy
        host_raw = self.host_raw
        if self.bad_request or (not host_raw and self.version == "1.1"):
            # As Go's server: HTTP/1.1 needs exactly one Host header.
            self.close_after = True
            self.respond_error(400)
            return
        host = host_raw.decode("latin-1")
        if b":" in host_raw:
            host = request_host(host)
        match = proxy.router.lookup(host, self.path)
        if match is None:
            self.respond_error(404)
            return
        service, prefix = match
        self.service = service
        self.prefix = prefix
        if prefix != "/" and service.options.strip_prefix:
            stripped = self.path[len(prefix) :] or "/"
            self.routed_path = stripped
            raw = self.raw_path
            encoded_prefix = prefix.encode("latin-1")
            if raw.startswith(encoded_prefix):
                self.upstream_path = raw[len(encoded_prefix) :] or b"/"
            else:
                self.upstream_path = stripped.encode("utf-8")
        if proxy.metrics.enabled and self.routed_path not in service.excluded_metric_paths:
            proxy.metrics.request_started(service.name)
        if service.client_ip_header:
            value = self.header(service.client_ip_header)
            if value:
                self.client_ip_value = value
                self.x_forwarded_for = value
        if self.conn.scheme == "https" and not service.tls_enabled:
            self.respond_error(503)
            return
        if self._redirect(service, host):
            return
        if service.pause.state != RUNNING:
            self._handle_paused(service)
            return
        self.dispatch()

    def _redirect(self, service: Service, host: str) -> bool:
        scheme = self.conn.scheme
        target_scheme = scheme
        target_host = host
        needed = False
        if service.tls_enabled and service.tls_redirect and scheme == "http":
            target_scheme = "https"
            needed = True
        canonical = service.options.canonical_host
        if canonical and host != canonical:
            target_host = canonical
            needed = True
        if not needed:
            return False
        uri = self.raw_path.decode("latin-1") + (
            "?" + self.query.decode("latin-1") if self.query else ""
        )
        location = f"{target_scheme}://{target_host}{uri}"
        body = (
            f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
            if self.method == "GET"
            else b""
        )
        head = [
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: ",
            location.encode("latin-1"),
            b"\r\n",
        ]
        if self.method in ("GET", "HEAD"):
            head.append(b"Content-Type: " + CONTENT_TYPE + b"\r\n")
        head.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        self.close_after = True
        self.head_sent = True
        self.status = 301
        self._write([*head, body])
        self.resp_bytes = len(body)
        self.finish(301)
        return True

    def _handle_paused(self, service: Service) -> None:
        if self.method in _READ_METHODS and self.routed_path == service.health_path:
            self._respond_simple(200, b"")
            return
        if service.pause.state == STOPPED:
            self.respond_error(503, service.pause.stop_message)
            return
        self.proxy.spawn(self._wait_while_paused(service))

    async def _wait_while_paused(self, service: Service) -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.time() - (_perf() - self.started)
        outcome = await service.pause.wait(arrived)
        if self.finished:
            return
        if outcome == EXPIRED:
            self.proxy.logger.warn("Rejecting request due to expired pause", service=service.name)
            self.respond_error(504)
        elif outcome == REJECTED_STOPPED or service.pause.state == STOPPED:
            self.respond_error(503, service.pause.stop_message)
        elif service.pause.state == PAUSED:
            self._handle_paused(service)
        else:
            self.dispatch()

    def dispatch(self) -> None:
        service = self.service
        assert service is not None
        balancer = service.active
        rollout = service.rollout
        controller = service.rollout_controller
        if (
            rollout is not None
            and controller is not None
            and self.cookie
            and controller.matches(_cookie_value(self.cookie, b"kamal-rollout"))
        ):
            balancer = rollout
        if balancer is None:
            self.respond_error(503)
            return
        self.balancer = balancer
        is_read = self.method in _READ_METHODS and (
            self.upgrade is None or service.options.read_targets_accept_websockets
        )
        self.is_read = is_read
        wants_reader = is_read
        if is_read and balancer.readers and self.cookie:
            affinity = _cookie_value(self.cookie, b"kamal-writer")
            if affinity and affinity.isdigit() and int(affinity) > _time_ns() // 1_000_000:
                wants_reader = False
        target = balancer.pick(wants_reader)
        if target is None or target.draining:
            self.respond_error(503)
            return
        self.target = target
        target.begin(self)
        if self.expect_continue and self.has_body and not self.body_done:
            self._write([b"HTTP/1.1 100 Continue\r\n\r\n"])
        if service.target_options.buffer_requests and self.has_body and self.upgrade is None:
            options = service.target_options
            buffer = SpillBuffer(options.max_memory_buffer_size, options.max_request_body_size)
            self.req_buffer = buffer
            pending, self.pending_body = self.pending_body, []
            try:
                for chunk in pending:
                    buffer.write(chunk)
            except BodyTooLarge:
                self._request_too_large()
                return
            if not self.body_done:
                self.conn.transport.resume_reading()
                return
        self._connect_upstream()

    # --- request body -----------------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.finished:
            return
        buffer = self.req_buffer
        if buffer is not None:
            try:
                buffer.write(chunk)
            except BodyTooLarge:
                self._request_too_large()
            return
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if self.chunked:
                upstream.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                upstream.transport.write(chunk)
            return
        self.pending_body.append(chunk)
        if sum(len(c) for c in self.pending_body) > _MAX_PENDING_BODY:
            self.conn.transport.pause_reading()

    def request_body_done(self) -> None:
        self.body_done = True
        if self.finished:
            return
        if self.connecting:
            self._arm_target_timeout()
        if self.req_buffer is not None:
            if self.target is not None and not self.connecting:
                self._connect_upstream()
            return
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and self.chunked:
            upstream.transport.write(b"0\r\n\r\n")

    def request_body_malformed(self) -> None:
        """The client sent a broken chunked body: 400, and the upstream is abandoned."""
        if self.finished:
            return
        if self.head_sent:
            self.conn.transport.close()
            self.finish(self.status or 400)
            return
        self.close_after = True
        self._drop_upstream()
        self.respond_error(400)

    def _request_too_large(self) -> None:
        self.close_after = True
        self._drop_upstream()
        self.respond_error(413)

    # --- upstream connection ------------------------------------------------------------

    def _arm_target_timeout(self) -> None:
        """--target-timeout counts from the moment the whole request is on its way upstream
        (a slow upload is not the target's fault), until the response head arrives."""
        timeout = self.service.target_timeout if self.service is not None else 0
        if timeout > 0 and not self.waiting and not self.head_sent:
            self.proxy.deadlines[self] = _monotonic() + timeout
            self.waiting = True

    def _connect_upstream(self) -> None:
        target = self.target
        assert target is not None
        self.connecting = True
        if self.body_done:
            self._arm_target_timeout()
        conn = target.acquire()
        if conn is not None:
            self._attach(conn)
        else:
            self.proxy.spawn(self._open_connection(target))

    async def _open_connection(self, target: Target) -> None:
        try:
            conn = await target.connect()
        except OSError as exc:
            if not self.finished:
                self.proxy.logger.error(
                    "Error while proxying", target=target.address, path=self.path, error=str(exc)
                )
                self.respond_error(502)
            return
        if self.finished:
            target.release(conn, True)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.begin(self, self.method == "HEAD")
        service = self.service
        assert service is not None and self.target is not None
        forward = service.target_options.forward_headers
        peer = self.conn.client_addr.encode("latin-1")
        xff = self.x_forwarded_for
        xff_out = xff + b", " + peer if forward and xff else peer
        scheme = self.conn.scheme_bytes
        xfp_out = self.x_forwarded_proto if forward and self.x_forwarded_proto else scheme
        xfh_out = self.x_forwarded_host if forward and self.x_forwarded_host else self.host_raw
        address = self.target.address_bytes
        if forward and self.x_kamal_target:
            kamal_target = self.x_kamal_target + b", " + address
        else:
            kamal_target = address
        path = self.upstream_path
        target_uri = path + b"?" + self.query if self.query else path
        parts = [
            self.method.encode("latin-1"),
            b" ",
            target_uri,
            b" HTTP/1.1\r\nHost: ",
            self.host_raw or address,
            b"\r\n",
        ]
        parts += self.kept_headers
        parts += (
            b"X-Forwarded-For: ",
            xff_out,
            b"\r\nX-Forwarded-Proto: ",
            xfp_out,
            b"\r\nX-Forwarded-Host: ",
            xfh_out,
            b"\r\nX-Kamal-Target: ",
            kamal_target,
            b"\r\n",
        )
        if not self.request_id_given:
            parts += (b"X-Request-ID: ", self.request_id.encode("latin-1"), b"\r\n")
        if not self.request_start_given:
            parts += (b"X-Request-Start: ", self.request_start, b"\r\n")
        body: list[bytes] = []
        buffer = self.req_buffer
        if self.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", self.upgrade, b"\r\n")
        elif buffer is not None:
            parts.append(b"Content-Length: %d\r\n" % buffer.size)
            body = list(buffer.chunks())
        elif self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            for chunk in self.pending_body:
                body += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            if self.body_done:
                body.append(b"0\r\n\r\n")
        elif self.content_length >= 0:
            parts.append(b"Content-Length: %d\r\n" % self.content_length)
            body = self.pending_body
        parts.append(b"\r\n")
        self.pending_body = []
        assert conn.transport is not None
        conn.transport.write(b"".join(parts + body))
        if buffer is not None:
            buffer.close()
            self.req_buffer = None
        if not self.body_done and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def _drop_upstream(self) -> None:
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()

    def on_deadline(self) -> None:
        """Called by the server's deadline sweep: no response head within --target-timeout."""
        self.waiting = False
        if self.finished or self.head_sent:
            return
        self._drop_upstream()
        self.respond_error(504)

    # --- upstream callbacks (see upstream.ResponseSink) ---------------------------------

    def on_response_head(self, conn: UpstreamConnection) -> None:
        status = conn.status
        if conn.interim:
            self._forward_interim(conn)
            return
        if self.waiting:
            self.waiting = False
            self.proxy.deadlines.pop(self, None)
        self.status = status
        self.resp_headers = conn.header_list
        service = self.service
        assert service is not None
        balancer = self.balancer
        affinity_cookie = (
            balancer is not None
            and balancer.readers
            and not self.is_read
            and service.options.writer_affinity_timeout > 0
        )
        scope_cookies = (
            service.target_options.scope_cookie_paths
            and self.prefix != "/"
            and service.options.strip_prefix
        )
        # Like Go's server, the status line uses the standard reason phrase.
        head = [status_line(status)]
        head += conn.head_parts  # already without hop-by-hop and framing headers
        content_type = conn.content_type
        for name, value in conn.set_cookies:
            if scope_cookies:
                value = _scope_cookie(
                    value, self.prefix, request_host(self.host_raw.decode("latin-1"))
                )
            head += (name, b": ", value, b"\r\n")
        if conn.affinity_opt_out:
            affinity_cookie = False
        if status == 101:
            head += conn.upgrade_headers
        self.resp_content_type = content_type
        if affinity_cookie:
            expiry_ms = (
                _time_ns() // 1_000_000 + service.options.writer_affinity_timeout // 1_000_000
            )
            expires = formatdate(expiry_ms / 1000 + 1, usegmt=True)
            head.append(
                b"Set-Cookie: kamal-writer=%d; Path=/; Expires=%s; HttpOnly\r\n"
                % (expiry_ms, expires.encode())
            )
        if status == 101:
            head.append(b"Connection: Upgrade\r\n\r\n")
            self.resp_head = head
            return
        no_body = self.method == "HEAD" or status in (204, 304)
        options = service.target_options
        streaming = content_type.startswith(b"text/event-stream") or conn.chunked
        if options.buffer_responses and not no_body and not streaming:
            self.resp_buffer = SpillBuffer(
                options.max_memory_buffer_size, options.max_response_body_size
            )
            self.resp_head = head
            return
        if no_body:
            if conn.content_length >= 0:
                head.append(b"Content-Length: %d\r\n" % conn.content_length)
        elif conn.content_length >= 0:
            head.append(b"Content-Length: %d\r\n" % conn.content_length)
        elif self.version == "1.1":
            head.append(b"Transfer-Encoding: chunked\r\n")
            self.resp_chunked = True
        else:
            self.close_after = True
        self._finish_head(head)
        self.out.extend(head)
        self.head_sent = True

    def _finish_head(self, head: list[bytes]) -> None:
        if not self.keep_alive or self.proxy.shutting_down or self.upgrade is not None:
            self.close_after = True
        if self.close_after:
            head.append(b"Connection: close\r\n\r\n")
        elif self.version == "1.0":
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(b"\r\n")

    def _forward_interim(self, conn: UpstreamConnection) -> None:
        head = [status_line(conn.status)]
        for name, value in conn.header_list:
            head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.out.extend(head)

    def on_response_body(self, body: bytes) -> None:
        buffer = self.resp_buffer
        if buffer is not None:
            try:
                buffer.write(body)
            except BodyTooLarge:
                self.proxy.logger.info(
                    "Response exceeded max response limit",
                    path=self.path,
                    service=self.service_name,
                )
                self.resp_buffer = None
                buffer.close()
                self._drop_upstream()
                self.respond_error(500)
            return
        self.resp_bytes += len(body)
        if self.resp_chunked:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_response_complete(self) -> None:
        self.response_complete = True
        buffer = self.resp_buffer
        if buffer is not None:
            head = self.resp_head
            head.append(b"Content-Length: %d\r\n" % buffer.size)
            self._finish_head(head)
            self.out.extend(head)
            self.head_sent = True
            self.resp_bytes = buffer.size
            self.out.extend(buffer.chunks())
            buffer.close()
            self.resp_buffer = None
        elif self.resp_chunked:
            self.out.append(b"0\r\n\r\n")

    def after_upstream_read(self) -> None:
        """Send what this read produced in one write; finish if the response is complete."""
        out = self.out
        if out:
            self.out = []
            transport = self.conn.transport
            if not transport.is_closing():
                transport.write(b"".join(out))
        if self.response_complete and not self.finished:
            conn = self.upstream
            target = self.target
            if conn is not None and target is not None:
                self.upstream = None
                target.release(conn, conn.keep_alive and self.body_done)
            if not self.body_done:
                self.close_after = True
            self.finish(self.status)

    def on_upstream_lost(self, conn: UpstreamConnection, error: str) -> None:
        if self.finished or conn is not self.upstream:
            return
        self.upstream = None
        if self.head_sent or self.resp_buffer is not None:
            if self.resp_buffer is None and conn.close_delimited and conn.status:
                # The body ran to the end of the connection: that is a complete response.
                self.response_complete = True
                self.close_after = self.close_after or not self.resp_chunked
                if self.resp_chunked:
                    self.out.append(b"0\r\n\r\n")
                self.after_upstream_read()
                return
            self.close_after = True
            self.conn.transport.close()
            self.finish(self.status)
            return
        if (
            conn.uses > 1
            and not conn.received
            and not self.retried
            and not self.has_body
            and self.upgrade is None
            and self.target is not None
            and not self.target.draining
        ):
            # A pooled connection went stale (the upstream closed it while idle): one retry.
            self.retried = True
            self.proxy.spawn(self._open_connection(self.target))
            return
        self.proxy.logger.error(
            "Error while proxying",
            target=self.target.address if self.target else "",
            path=self.path,
            error=error,
        )
        self.respond_error(502)

    def on_upstream_pause(self, paused: bool) -> None:
        transport = self.conn.transport
        if transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def on_upstream_upgrade(self, conn: UpstreamConnection, leftover: bytes) -> None:
        if self.finished or self.target is None or conn.status != 101 or not self.resp_head:
            conn.close()
            if not self.finished:
                self.upstream = None
                self.respond_error(502)
            return
        head = self.resp_head
        self.status = 101
        self.head_sent = True
        client = self.conn.transport
        client.write(b"".join(head) + leftover)
        conn.detach()
        self.upstream = None
        tunnel = Tunnel(client, conn, self.target, self._tunnel_closed)
        conn.tunnel = tunnel
        self.conn.start_tunnel(tunnel)

    def _tunnel_closed(self) -> None:
        self.close_after = True
        self.finish(101)

    # --- proxy-generated responses ----------------------------------------------------

    def respond_error(self, status: int, message: str = "") -> None:
        if self.finished:
            return
        if self.head_sent:
            self.close_after = True
            self.conn.transport.close()
            self.finish(status)
            return
        pages = self.service.error_pages if self.service is not None else self.proxy.error_pages
        body = pages.render(status, message)
        self._respond(status, CONTENT_TYPE, body)

    def _respond_simple(self, status: int, body: bytes) -> None:
        self._respond(status, b"", body)

    def _respond(self, status: int, content_type: bytes, body: bytes) -> None:
        if self.waiting:
            self.waiting = False
            self.proxy.deadlines.pop(self, None)
        if self.upstream is not None:
            self._drop_upstream()
        if not self.body_done and (self.has_body or self.upgrade is not None):
            self.close_after = True
        self.status = status
        self.resp_content_type = content_type
        head = [status_line(status)]
        if content_type:
            head.append(b"Content-Type: " + content_type + b"\r\n")
        head.append(b"Content-Length: %d\r\n" % len(body))
        self._finish_head(head)
        if self.method != "HEAD":
            head.append(body)
            self.resp_bytes = len(body)
        self.head_sent = True
        self.out = []
        self._write(head)
        self.finish(status)

    # --- drain, disconnects, completion ---------------------------------------------------

    def cancel_for_drain(self) -> None:
        if self.finished:
            return
        self.proxy.logger.info(
            "Request cancelled due to draining", path=self.path, service=self.service_name
        )
        self._drop_upstream()
        if self.head_sent:
            self.close_after = True
            self.conn.transport.close()
            self.finish(self.status)
        else:
            self.respond_error(504)

    def client_gone(self) -> None:
        """The client hung up before the response finished: logged as 499."""
        if self.finished:
            return
        self._drop_upstream()
        self.close_after = True
        self.finish(499 if not self.response_complete else self.status)

    @property
    def service_name(self) -> str:
        return self.service.name if self.service is not None else ""

    def finish(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        if self.waiting:
            self.waiting = False
            self.proxy.deadlines.pop(self, None)
        if self.upstream is not None:
            self._drop_upstream()
        if self.req_buffer is not None:
            self.req_buffer.close()
        if self.resp_buffer is not None:
            self.resp_buffer.close()
        target = self.target
        if target is not None:
            target.end(self)
        duration = _perf() - self.started
        service = self.service
        proxy = self.proxy
        if service is not None:
            excluded = self.routed_path in service.excluded_metric_paths
            if proxy.metrics.enabled and not excluded:
                proxy.metrics.request_finished(service.name)
                proxy.metrics.observe(service.name, self.method, status, duration)
        elif proxy.metrics.enabled:
            proxy.metrics.observe("", self.method, status, duration)
        self._log(status, duration)
        self.conn.exchange_done(self)

    def _log(self, status: int, duration: float) -> None:
        conn = self.conn
        service = self.service
        target = self.target
        extra = ""
        if service is not None and (service.request_log_headers or service.response_log_headers):
            extra = self._logged_headers(service)
        # Values that rarely change are escaped once and cached (per connection, service
        # or target); only request-specific strings are escaped here.
        if self.x_forwarded_for:
            remote = escape(self.x_forwarded_for.decode("latin-1"))
        else:
            remote = conn.client_addr_json
        service_json = service.name_json if service is not None else '""'
        target_json = target.address_json if target is not None else '""'
        line = (
            f'{{"time":"{self.proxy.logger.clock.now()}","level":"INFO","msg":"Request",'
            f'"host":{conn.escaped(self.host_raw)},"port":{conn.port},'
            f'"path":{conn.escaped_text(self.path)},"request_id":"{self.request_id}",'
            f'"status":{status},"service":{service_json},"target":{target_json},'
            f'"duration":{int(duration * 1e9)},"method":{conn.escaped_text(self.method)},'
            f'"req_content_length":{-1 if self.chunked else max(self.content_length, 0)},'
            f'"req_content_type":{conn.escaped(self.content_type)},'
            f'"resp_content_length":{self.resp_bytes},'
            f'"resp_content_type":{conn.escaped(self.resp_content_type)},'
            f'"client_addr":{conn.client_addr_json},"client_port":"{conn.client_port}",'
            f'"remote_addr":{remote},"user_agent":{conn.escaped(self.user_agent)},'
            f'"proto":"HTTP/{self.version}","scheme":"{conn.scheme}",'
            f'"query":{escape(self.query.decode("latin-1"))}{extra}}}\n'
        )
        self.proxy.logger.write_line(line)

    def _logged_headers(self, service: Service) -> str:
        pieces = []
        for lname, key in service.request_log_headers:
            values = [v.decode("latin-1") for n, v in self.header_list if n.lower() == lname]
            pieces.append(f",{escape(key)}:{escape(','.join(values))}")
        for lname, key in service.response_log_headers:
            values = [v.decode("latin-1") for n, v in self.resp_headers if n.lower() == lname]
            pieces.append(f",{escape(key)}:{escape(','.join(values))}")
        return "".join(pieces)
