"""One request/response exchange: route it, pick a target, forward it, stream the answer back.

This is the hot path.  It is written as callbacks (no task per request, no future, no
per-request loop timer) and works on bytes: the upstream request head is assembled from
header pieces with one join, each upstream read is sent to the client with one ``write``
of the joined pieces (uvloop's ``writelines`` issues one send per piece), and the
access-log line is one f-string of cached JSON escapes.  The common case — a routed
request to a running service with one healthy target and a pooled upstream connection —
runs through ``start``, ``_dispatch`` and ``_attach`` with few calls; everything else
(redirects, pause, rollout, buffering, cookies, absolute URLs, …) branches off to helpers.
A task is only created for the rare slow paths: opening a new upstream connection,
waiting while a service is paused.

Timeouts cost nothing per request: ``--target-timeout`` is checked by the server's 50 ms
sweep over the targets' in-flight requests (``waiting``/``wait_from``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from bisect import bisect_left
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .acme import CHALLENGE_PATH
from .bodybuffer import BodyTooLarge, SpillBuffer
from .controllers import EXPIRED, PAUSED, REJECTED_STOPPED, RUNNING, STOPPED
from .error_pages import CONTENT_TYPE, reason_phrase
from .logs import CLOCK, ESCAPED_BYTES, ESCAPED_TEXT, escape, escape_bytes, escape_text
from .metrics import BUCKETS_NS, ServiceStats, new_series
from .outbox import OUTBOX
from .router import request_host
from .tunnel import Tunnel
from .upstream import UpstreamConnection, merge_headers

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
# The same codes by header name exactly as clients spell it, so the common names need
# no ``lower()``; filled as names are seen (bounded: clients choose the names).
_REQUEST_CODES: dict[bytes, int] = {}
_CODE_CACHE_LIMIT = 1024


def _request_code(name: bytes) -> int:
    code = _REQUEST_SPECIAL.get(name.lower(), _KEEP)
    if len(_REQUEST_CODES) < _CODE_CACHE_LIMIT and len(name) <= 64:
        _REQUEST_CODES[name] = code
    return code


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

# "Content-Length: N\r\n" lines by N, for the lengths seen most (bounded).
_CONTENT_LENGTH_LINES: dict[int, bytes] = {}


def content_length_line(length: int) -> bytes:
    line = _CONTENT_LENGTH_LINES.get(length)
    if line is None:
        line = b"Content-Length: %d\r\n" % length
        if len(_CONTENT_LENGTH_LINES) < 1024:
            _CONTENT_LENGTH_LINES[length] = line
    return line


class _StartLine:
    """The millisecond and ``\r\nX-Request-Start: t=<ms>\r\n`` last sent with a new id."""

    __slots__ = ("line", "ms")

    def __init__(self) -> None:
        self.ms = -1
        self.line = b""

    def make(self, ms: int) -> bytes:
        self.ms = ms
        self.line = b"\r\nX-Request-Start: t=%d\r\n" % ms
        return self.line


_START_LINE = _StartLine()

_perf_ns = time.perf_counter_ns
_time_ns = time.time_ns
_getrandbits = random.getrandbits


class _RequestIds:
    """UUIDv4-shaped request IDs: a random per-process prefix and a counter.

    Unique within the process and cheap; they only correlate log lines and upstream
    requests, so they need not be unpredictable.
    """

    def __init__(self) -> None:
        self.prefix = ""
        self.take = itertools.count(1).__next__
        self.reseed()

    def reseed(self) -> int:
        """A new prefix and counter; returns the first value of the new counter."""
        h = f"{_getrandbits(128):032x}"
        self.prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:24]}"
        self.take = itertools.count(1).__next__
        return self.take()

    def next(self) -> str:
        counter = self.take()
        if counter > 0xFFFFFFFF:
            counter = self.reseed()
        return f"{self.prefix}{counter:08x}"


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


_NO_PARTS: list[bytes] = []  # shared, never mutated
_NO_JSON = '""'
_NO_OTHERS: list[tuple[int, bytes, bytes]] = []  # shared, never mutated


def _log_placement(service: Service | None, target: Target | None, status: int) -> str:
    """The log line's ``"status":…,"service":…,"target":…,"duration":``.

    Cached on the target, by status, for the service that last used the target.
    """
    piece = (
        f'"status":{status},"service":{service.name_json if service is not None else _NO_JSON},'
        f'"target":{target.address_json if target is not None else _NO_JSON},"duration":'
    )
    if target is not None:
        if target.log_service is not service:
            target.log_service = service
            target.log_placements = {}
        if len(target.log_placements) < 64:
            target.log_placements[status] = piece
    return piece


# The log line's request piece (see Exchange._log_request_piece) of a request without a
# body or content type, by method (bounded: the methods llhttp parses).
_PLAIN_REQUEST_PIECES: dict[str, str] = {}


LOG_BATCH = 128  # request-log lines written together; the sweep writes the rest every 50 ms


class Exchange:
    __slots__ = (
        "bad_request",
        "balancer",
        "body_done",
        "chunked",
        "close_after",
        "conn",
        "connecting",
        "content_length",
        "content_type",
        "cookie",
        "expect_continue",
        "finished",
        "head_sent",
        "header_list",
        "host_raw",
        "is_read",
        "keep_alive",
        "kept_headers",
        "method",
        "out",
        "path",
        "pending_body",
        "prefix",
        "proxy",
        "query",
        "raw_method",
        "raw_path",
        "req_buffer",
        "request_id",
        "request_id_given",
        "request_start",
        "resp_buffer",
        "resp_bytes",
        "resp_chunked",
        "resp_content_type",
        "resp_head",
        "resp_header_parts",
        "resp_other_headers",
        "response_complete",
        "retried",
        "routed_path",
        "service",
        "started",
        "stats",
        "status",
        "target",
        "timeout_ns",
        "upgrade",
        "upstream",
        "upstream_path",
        "user_agent",
        "version",
        "wait_from",
        "waiting",
        "wall",
        "x_forwarded_for",
        "x_forwarded_host",
        "x_forwarded_proto",
        "x_kamal_target",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: str,
        raw_method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.conn = conn
        self.proxy: ProxyServer = conn.proxy
        self.started = _perf_ns()  # for durations
        self.wall = _time_ns()  # for X-Request-Start and the log's time
        self.method = method
        self.raw_method = raw_method
        self.version = version
        self.keep_alive = keep_alive
        self.header_list = headers
        self.out: list[bytes] = []
        # Body chunks received before the upstream is attached; a list only once there are.
        self.pending_body = _NO_PARTS
        # State of the exchange (every slot is set here: no class-level defaults).
        self.service: Service | None = None
        self.balancer: LoadBalancer | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConnection | None = None
        self.stats: ServiceStats | None = None
        self.prefix = "/"
        self.status = 0
        self.finished = False
        self.head_sent = False
        self.response_complete = False
        self.close_after = False
        self.retried = False
        # --target-timeout: the sweep answers 504 when ``waiting`` for longer than
        # ``timeout_ns`` since ``wait_from`` (perf_counter_ns); both are set by _dispatch
        # and _arm_target_timeout.
        self.waiting = False
        self.connecting = False  # an upstream connection was requested (pooled or being opened)
        self.body_done = False
        self.req_buffer: SpillBuffer | None = None
        self.resp_buffer: SpillBuffer | None = None
        self.resp_head = _NO_PARTS
        # The response's headers as UpstreamConnection keeps them (see merge_headers).
        self.resp_header_parts = _NO_PARTS
        self.resp_other_headers = _NO_OTHERS
        self.resp_bytes = 0
        self.resp_chunked = False
        self.resp_content_type = b""
        self.bad_request = False

        if url[:1] != b"/" and b"://" in url[:8]:
            # Absolute-form request target: the authority replaces the Host header.
            after_scheme = url.split(b"://", 1)[1]
            authority, slash, rest = after_scheme.partition(b"/")
            url = slash + rest if slash else b"/"
            absolute_host: bytes | None = authority
        else:
            absolute_host = None
        raw_path, _, query = url.partition(b"?")
        if not raw_path:
            raw_path = b"/"
        self.raw_path = raw_path
        self.query = query

        # Header values default to "absent"; the loop below overwrites what is present.
        self.content_length = -1
        self.chunked = False
        self.cookie = b""
        self.content_type = b""
        self.user_agent = b""
        self.x_forwarded_for: bytes | None = None
        self.x_forwarded_proto = b""
        self.x_forwarded_host = b""
        self.x_kamal_target = b""
        self.expect_continue = False
        self.request_start = b""  # empty: generated from ``wall`` when sent
        self.upgrade: bytes | None = None
        host = b""
        host_seen = False
        request_id = b""
        kept: list[bytes] = []
        codes = _REQUEST_CODES
        for name, value in headers:
            code = codes.get(name)
            if code is None:
                code = _request_code(name)
            if code == _KEEP:
                kept += (name, b": ", value, b"\r\n")
            elif code == 2:
                if host_seen:
                    self.bad_request = True  # several Host headers: ambiguous routing
                host = value
                host_seen = True
            elif code == 15:
                self.user_agent = value
                kept += (name, b": ", value, b"\r\n")
            elif code == _DROP:
                if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            elif code == 4:
                pass
            elif code == 13:
                self.cookie = value if not self.cookie else self.cookie + b"; " + value
                kept += (name, b": ", value, b"\r\n")
            elif code == 3:
                self.content_length = int(value) if value.strip().isdigit() else -1
            elif code == 14:
                self.content_type = value
                kept += (name, b": ", value, b"\r\n")
            else:
                self._special_header(code, value)
                if code == 9:
                    request_id = value
                    kept += (name, b": ", value, b"\r\n")
                elif code == 10:
                    kept += (name, b": ", value, b"\r\n")
        if not upgrade:
            self.upgrade = None
        if absolute_host is not None:
            host = absolute_host
        self.host_raw = host
        self.kept_headers = kept
        if request_id:
            self.request_id_given = True
            # Kept JSON-escaped (it is only logged, or sent upstream when we generated it).
            self.request_id = escape(request_id.decode("latin-1"))[1:-1]
        else:
            self.request_id_given = False
            self.request_id = new_request_id()
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        self.path = path
        self.routed_path = path
        self.upstream_path = raw_path

    def _special_header(self, code: int, value: bytes) -> None:
        """The request headers that are rare in practice (see _REQUEST_SPECIAL)."""
        if code == 5:
            self.upgrade = value
        elif code == 6:
            xff = self.x_forwarded_for
            self.x_forwarded_for = value if xff is None else xff + b", " + value
        elif code == 7:
            self.x_forwarded_proto = value
        elif code == 8:
            self.x_forwarded_host = value
        elif code == 10:
            self.request_start = value
        elif code == 11:
            target = self.x_kamal_target
            self.x_kamal_target = value if not target else target + b", " + value
        elif code == 12:
            self.expect_continue = value.lower() == b"100-continue"

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
            OUTBOX.defer(transport, b"".join(data))

    # --- routing and the service pipeline ---------------------------------------------

    def start(self) -> None:
        proxy = self.proxy
        host_raw = self.host_raw
        if self.bad_request or (not host_raw and self.version == "1.1"):
            # As Go's server: HTTP/1.1 needs exactly one Host header.
            self.close_after = True
            self.respond_error(400)
            return
        router = proxy.router
        entry = router.host_cache.get(host_raw)
        if entry is None:
            entry = router.resolve_host(host_raw)
        host, bindings = entry
        service = None
        prefix = "/"
        if bindings is not None:
            path = self.path
            for prefix, prefix_slash, candidate in bindings:
                if prefix == "/" or path == prefix or path.startswith(prefix_slash):
                    service = candidate
                    break
        if service is None:
            self.respond_error(404)
            return
        self.service = service
        if prefix != "/":
            self.prefix = prefix
            if service.options.strip_prefix:
                self._strip_prefix(prefix)
        if proxy.metrics.enabled:
            excluded = service.excluded_metric_paths
            if not excluded or self.routed_path not in excluded:
                stats = service.stats
                if stats is None:
                    stats = service.stats = proxy.metrics.stats(service.name)
                stats.in_flight += 1
                self.stats = stats
        if service.client_ip_header:
            value = self.header(service.client_ip_header)
            if value:
                self.x_forwarded_for = value
        if self.conn.https and not service.tls_enabled:
            self.respond_error(503)
            return
        if service.tls_enabled or service.canonical_host:
            # ACME's HTTP-01 validation comes over plain HTTP and must not be redirected;
            # only automatic-TLS services answer it (others pass the path to the app).
            if (
                self.path.startswith(CHALLENGE_PATH)
                and service.tls_enabled
                and service.ssl_context is None
                and not self.conn.https
            ):
                self._answer_acme_challenge()
                return
            if self._redirect(service, host):
                return
        if service.pause.state != RUNNING:
            self._handle_paused(service)
            return
        self._dispatch(service)

    def _strip_prefix(self, prefix: str) -> None:
        stripped = self.path[len(prefix) :] or "/"
        self.routed_path = stripped
        raw = self.raw_path
        encoded_prefix = prefix.encode("latin-1")
        if raw.startswith(encoded_prefix):
            self.upstream_path = raw[len(encoded_prefix) :] or b"/"
        else:
            self.upstream_path = stripped.encode("utf-8")

    def _redirect(self, service: Service, host: str) -> bool:
        scheme = self.conn.scheme
        target_scheme = scheme
        target_host = host
        needed = False
        if service.tls_enabled and service.tls_redirect and scheme == "http":
            target_scheme = "https"
            needed = True
        canonical = service.canonical_host
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

    def _answer_acme_challenge(self) -> None:
        token = self.path[len(CHALLENGE_PATH) :]
        key_authorization = self.proxy.certificates.responders.http_01.get(token)
        if key_authorization is None:
            self.respond_error(404)
        else:
            self._respond(200, b"text/plain", key_authorization.encode("ascii"))

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
        arrived = loop.time() - (_perf_ns() - self.started) / 1e9
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
            self._dispatch(service)

    def _dispatch(self, service: Service) -> None:
        balancer = service.active
        if service.rollout is not None:
            rollout = service.rollout
            controller = service.rollout_controller
            if (
                controller is not None
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
        if balancer.readers:
            wants_reader = is_read
            if is_read and self.cookie:
                affinity = _cookie_value(self.cookie, b"kamal-writer")
                if affinity and affinity.isdigit() and int(affinity) > _time_ns() // 1_000_000:
                    wants_reader = False
            target = balancer.pick(wants_reader)
        else:
            writers = balancer.healthy_writers
            target = writers[0] if len(writers) == 1 else balancer.pick(False)
        if target is None or target.draining:
            self.respond_error(503)
            return
        self.target = target
        target.inflight.add(self)
        self.timeout_ns = service.target_timeout_ns
        has_body = self.chunked or self.content_length > 0
        if has_body:
            if self.expect_continue and not self.body_done:
                self._write([b"HTTP/1.1 100 Continue\r\n\r\n"])
            if (
                service.buffer_requests
                and self.upgrade is None
                and not self._start_request_buffer(service)
            ):
                return
        self._connect_upstream()

    def _start_request_buffer(self, service: Service) -> bool:
        """--buffer-requests: collect the body first; True when it is already complete."""
        options = service.target_options
        buffer = SpillBuffer(options.max_memory_buffer_size, options.max_request_body_size)
        self.req_buffer = buffer
        pending, self.pending_body = self.pending_body, _NO_PARTS
        try:
            for chunk in pending:
                buffer.write(chunk)
        except BodyTooLarge:
            self._request_too_large()
            return False
        if not self.body_done:
            self.conn.resume_reading()
            return False
        return True

    # --- request body -----------------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
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
                OUTBOX.write(upstream.transport, b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                OUTBOX.write(upstream.transport, chunk)
            return
        if self.pending_body is _NO_PARTS:
            self.pending_body = []
        self.pending_body.append(chunk)
        if sum(len(c) for c in self.pending_body) > _MAX_PENDING_BODY:
            self.conn.pause_reading()

    def request_body_done(self) -> None:
        self.body_done = True
        if self.finished:
            return
        if self.connecting:
            # Dispatched already: for a request without a body this is the callback that
            # read its head, so its arrival time is the start of --target-timeout.
            has_body = self.chunked or self.content_length > 0
            self._arm_target_timeout(_perf_ns() if has_body else self.started)
        if self.req_buffer is not None:
            if self.target is not None and not self.connecting:
                self._connect_upstream()
            return
        if self.chunked:
            upstream = self.upstream
            if upstream is not None and upstream.transport is not None:
                OUTBOX.write(upstream.transport, b"0\r\n\r\n")

    def request_body_malformed(self) -> None:
        """The client sent a broken chunked body: 400, and the upstream is abandoned."""
        if self.finished:
            return
        if self.head_sent:
            OUTBOX.close(self.conn.transport)
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

    def _arm_target_timeout(self, now: int) -> None:
        """--target-timeout counts from the moment the whole request is on its way upstream
        (a slow upload is not the target's fault), until the response head arrives."""
        if self.timeout_ns > 0 and not self.waiting and not self.head_sent:
            self.wait_from = now
            self.waiting = True

    def _connect_upstream(self) -> None:
        """A pooled connection if there is one (the common case), else a new one."""
        target = self.target
        assert target is not None
        self.connecting = True
        if self.body_done:
            self._arm_target_timeout(_perf_ns())
        conn = target.acquire()
        if conn is not None:
            assert self.service is not None
            self._attach(conn, self.service)
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
        assert self.service is not None
        self._attach(conn, self.service)

    def _attach(self, conn: UpstreamConnection, service: Service) -> None:
        """Send the request head (and any body received so far) on ``conn``."""
        self.upstream = conn
        conn.begin(self, self.method == "HEAD")
        target = conn.target
        client = self.conn
        if client.write_paused:
            conn.pause_reading()
        path = self.upstream_path
        query = self.query
        parts = [
            self.raw_method,
            b" ",
            path + b"?" + query if query else path,
            b" HTTP/1.1\r\nHost: ",
            self.host_raw or target.address_bytes,
            b"\r\n",
        ]
        parts += self.kept_headers
        xff = self.x_forwarded_for
        if service.forward_headers:
            address = target.address_bytes
            parts += (
                b"X-Forwarded-For: ",
                xff + b", " + client.peer_bytes if xff else client.peer_bytes,
                b"\r\nX-Forwarded-Proto: ",
                self.x_forwarded_proto or client.scheme_bytes,
                b"\r\nX-Forwarded-Host: ",
                self.x_forwarded_host or self.host_raw,
                b"\r\nX-Kamal-Target: ",
                self.x_kamal_target + b", " + address if self.x_kamal_target else address,
                b"\r\n",
            )
        else:
            parts += (
                b"X-Forwarded-For: ",
                client.peer_bytes,
                client.forwarded_tail,  # X-Forwarded-Proto: <scheme>, X-Forwarded-Host:
                self.host_raw,
                target.kamal_target_line,  # X-Kamal-Target: <address>
            )
        # A client's own X-Request-ID and X-Request-Start are among the kept headers.
        if self.request_id_given:
            if not self.request_start:
                parts.append(b"X-Request-Start: t=%d\r\n" % (self.wall // 1_000_000))
        elif self.request_start:
            parts += (b"X-Request-ID: ", self.request_id.encode("latin-1"), b"\r\n")
        else:
            # X-Request-ID: <generated id>, then the X-Request-Start line of this millisecond.
            ms = self.wall // 1_000_000
            cached = _START_LINE
            start_line = cached.line if ms == cached.ms else cached.make(ms)
            parts += (b"X-Request-ID: ", self.request_id.encode("latin-1"), start_line)
        body = _NO_PARTS
        if self.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", self.upgrade, b"\r\n")
        elif self.req_buffer is not None:
            buffer = self.req_buffer
            self.req_buffer = None
            parts.append(b"Content-Length: %d\r\n" % buffer.size)
            body = list(buffer.chunks())
            buffer.close()
        elif self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            body = []
            for chunk in self.pending_body:
                body += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            if self.body_done:
                body.append(b"0\r\n\r\n")
            self.pending_body = _NO_PARTS
        elif self.content_length >= 0:
            parts.append(content_length_line(self.content_length))
            body = self.pending_body
            self.pending_body = _NO_PARTS
        parts.append(b"\r\n")
        if body:
            parts += body
        assert conn.transport is not None
        OUTBOX.defer(conn.transport, b"".join(parts))
        if not self.body_done and (self.chunked or self.content_length > 0):
            client.resume_reading()

    def _drop_upstream(self) -> None:
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()

    def on_deadline(self) -> None:
        """Called by the server's sweep: no response head within --target-timeout."""
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
        self.waiting = False
        self.status = status
        service = self.service
        assert service is not None
        self.resp_header_parts = conn.head_parts
        self.resp_other_headers = conn.other_headers
        # Like Go's server, the status line uses the standard reason phrase.
        head = [_STATUS_LINES.get(status) or status_line(status)]
        head += conn.head_parts  # already without hop-by-hop and framing headers
        if conn.set_cookies is not None:
            self._add_cookies(head, conn.set_cookies, service)
        if status == 101 and conn.upgrade_headers is not None:
            head += conn.upgrade_headers
        balancer = self.balancer
        if (
            balancer is not None
            and balancer.readers
            and not self.is_read
            and not conn.affinity_opt_out
            and service.options.writer_affinity_timeout > 0
        ):
            expiry_ms = (
                _time_ns() // 1_000_000 + service.options.writer_affinity_timeout // 1_000_000
            )
            expires = formatdate(expiry_ms / 1000 + 1, usegmt=True)
            head.append(
                b"Set-Cookie: kamal-writer=%d; Path=/; Expires=%s; HttpOnly\r\n"
                % (expiry_ms, expires.encode())
            )
        if self.conn.alt_svc:
            head.append(self.conn.alt_svc)
        content_type = conn.content_type
        self.resp_content_type = content_type
        if status == 101:
            head.append(b"Connection: Upgrade\r\n\r\n")
            self.resp_head = head
            return
        no_body = status == 204 or status == 304 or self.method == "HEAD"
        content_length = conn.content_length
        if (
            service.buffer_responses
            and not no_body
            and not conn.chunked
            and not content_type.startswith(b"text/event-stream")
        ):
            options = service.target_options
            self.resp_buffer = SpillBuffer(
                options.max_memory_buffer_size, options.max_response_body_size
            )
            self.resp_head = head
            return
        if content_length >= 0:
            head.append(
                _CONTENT_LENGTH_LINES.get(content_length) or content_length_line(content_length)
            )
        elif no_body:
            pass
        elif self.version == "1.1":
            head.append(b"Transfer-Encoding: chunked\r\n")
            self.resp_chunked = True
        else:
            self.close_after = True
        if (
            self.close_after
            or not self.keep_alive
            or self.proxy.shutting_down
            or self.upgrade is not None
        ):
            self.close_after = True
            head.append(b"Connection: close\r\n\r\n")
        elif self.version == "1.0":
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(b"\r\n")
        if self.out:
            self.out += head  # after a forwarded 1xx response
        else:
            self.out = head
        self.head_sent = True

    def _add_cookies(
        self, head: list[bytes], set_cookies: list[tuple[bytes, bytes]], service: Service
    ) -> None:
        scope = (
            service.target_options.scope_cookie_paths
            and self.prefix != "/"
            and service.options.strip_prefix
        )
        for name, value in set_cookies:
            if scope:
                value = _scope_cookie(
                    value, self.prefix, request_host(self.host_raw.decode("latin-1"))
                )
            head += (name, b": ", value, b"\r\n")

    def _finish_head(self, head: list[bytes]) -> None:
        if self.conn.alt_svc:
            head.append(self.conn.alt_svc)
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
        for name, value in conn.headers():
            head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self.out.extend(head)

    def on_response_body(self, body: bytes) -> None:
        if self.resp_buffer is not None:
            self._buffer_response_body(body)
            return
        self.resp_bytes += len(body)
        if self.resp_chunked:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def _buffer_response_body(self, body: bytes) -> None:
        buffer = self.resp_buffer
        assert buffer is not None
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
            transport = self.conn.transport
            if not transport.is_closing():
                OUTBOX.defer(transport, b"".join(out))
            out.clear()
        if self.response_complete and not self.finished:
            conn = self.upstream
            if conn is not None:
                self.upstream = None
                conn.target.release(conn, conn.keep_alive and self.body_done)
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
            OUTBOX.close(self.conn.transport)
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
        if self.conn.transport.is_closing():
            return
        if paused:
            self.conn.pause_reading()
        else:
            self.conn.resume_reading()

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
        OUTBOX.write(client, b"".join(head) + leftover)
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
            OUTBOX.close(self.conn.transport)
            self.finish(status)
            return
        pages = self.service.error_pages if self.service is not None else self.proxy.error_pages
        body = pages.render(status, message)
        self._respond(status, CONTENT_TYPE, body)

    def _respond_simple(self, status: int, body: bytes) -> None:
        self._respond(status, b"", body)

    def _respond(self, status: int, content_type: bytes, body: bytes) -> None:
        self.waiting = False
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
            OUTBOX.close(self.conn.transport)
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
        self.waiting = False
        if self.upstream is not None:
            self._drop_upstream()
        if self.req_buffer is not None:
            self.req_buffer.close()
        if self.resp_buffer is not None:
            self.resp_buffer.close()
        target = self.target
        if target is not None:
            target.inflight.discard(self)
            if target.drain_waiters:
                target.end(self)
        duration = _perf_ns() - self.started
        stats = self.stats
        if stats is not None:
            stats.in_flight -= 1
        elif self.service is None and self.proxy.metrics.enabled:
            stats = self.proxy.metrics.unrouted
        if stats is not None:
            key = (self.method, status)
            series = stats.series.get(key)
            if series is None:
                series = stats.series[key] = new_series()
            series[0] += duration
            series[bisect_left(BUCKETS_NS, duration) + 1] += 1

        # The access-log line.  Values that repeat are escaped once and cached (logs.py),
        # and the runs of fields that rarely change on a connection (host and port; service
        # and target by status; method and request framing; client address, user agent,
        # protocol and scheme) are kept as ready pieces, on the connection, the target or
        # here, while their inputs stay the same.
        conn = self.conn
        service = self.service
        host_raw = self.host_raw
        host = conn.log_host if host_raw == conn.log_host_raw else conn.log_host_piece(host_raw)
        path = ESCAPED_TEXT.get(self.path) or escape_text(self.path)
        if target is not None and target.log_service is service:
            placement = target.log_placements.get(status) or _log_placement(service, target, status)
        else:
            placement = _log_placement(service, target, status)
        agent = self.user_agent
        if (
            agent == conn.log_agent
            and self.version == conn.log_version
            and not (self.x_forwarded_for)
        ):
            client = conn.log_tail
        else:
            client = self._log_client_piece(conn, agent)
        query = self.query
        query_json = (ESCAPED_BYTES.get(query) or escape_bytes(query)) if query else _NO_JSON
        if service is not None and service.log_headers:
            query_json += self._logged_headers(service)
        length = self.content_length
        if length <= 0 and not self.content_type and not self.chunked:
            request = _PLAIN_REQUEST_PIECES.get(self.method) or self._log_request_piece()
        else:
            request = self._log_request_piece()
        resp_type = self.resp_content_type
        resp_type_json = ESCAPED_BYTES.get(resp_type) or escape_bytes(resp_type)
        # The time of logging: the wall clock at arrival plus the duration, as decimal text
        # (the last nine digits are the nanoseconds; the rest are formatted once a second).
        wall = str(self.wall + duration)
        clock = CLOCK
        if wall[:-9] != clock.second_text:
            clock.advance(int(wall[:-9]))
        lines = self.proxy.log_lines
        lines.append(
            f'{{"time":"{clock.prefix}.{wall[-9:]}Z","level":"INFO","msg":"Request",'
            f'{host}{path},"request_id":"{self.request_id}",{placement}{duration}{request}'
            f'{self.resp_bytes},"resp_content_type":{resp_type_json}{client}{query_json}}}\n'
        )
        if len(lines) >= LOG_BATCH:
            # Written in small batches: one big write every 50 ms stalls every client at
            # once and shows in the latency tail (p99 about 8% lower in an A/B).
            self.proxy.logger.flush()
        conn.exchange_done(self)

    def _log_request_piece(self) -> str:
        """The log line from ``,"method"`` to ``"resp_content_length":``."""
        length = self.content_length
        piece = (
            f',"method":{escape_text(self.method)},'
            f'"req_content_length":{-1 if self.chunked else length if length > 0 else 0},'
            f'"req_content_type":{escape_bytes(self.content_type)},"resp_content_length":'
        )
        if (
            length <= 0
            and not self.content_type
            and not self.chunked
            and len(_PLAIN_REQUEST_PIECES) < 64
        ):
            _PLAIN_REQUEST_PIECES[self.method] = piece
        return piece

    def _log_client_piece(self, conn: ClientConnection, agent: bytes) -> str:
        """The log line from ``"client_addr"`` to ``"query":``; cached on the connection."""
        if self.x_forwarded_for:
            remote = escape_bytes(self.x_forwarded_for)
        else:
            remote = conn.client_addr_json
        piece = (
            f'{conn.log_client}{remote},"user_agent":{escape_bytes(agent)},'
            f'"proto":"HTTP/{self.version}","scheme":"{conn.scheme}","query":'
        )
        if not self.x_forwarded_for:
            conn.log_agent = agent
            conn.log_version = self.version
            conn.log_tail = piece
        return piece

    def _logged_headers(self, service: Service) -> str:
        pieces = []
        for lname, key in service.request_log_headers:
            values = [v.decode("latin-1") for n, v in self.header_list if n.lower() == lname]
            pieces.append(f",{escape(key)}:{escape(','.join(values))}")
        resp_headers = merge_headers(self.resp_header_parts, self.resp_other_headers)
        for lname, key in service.response_log_headers:
            values = [v.decode("latin-1") for n, v in resp_headers if n.lower() == lname]
            pieces.append(f",{escape(key)}:{escape(','.join(values))}")
        return "".join(pieces)
