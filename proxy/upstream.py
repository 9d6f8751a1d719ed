"""Connections to a target, and the target itself (its keep-alive pool, health, drain).

A ``Target`` object lives for one deploy: redeploying the same address creates a new one,
so the old pool and in-flight requests can be drained without touching the new ones.
That is what makes the in-process switch free of failed requests: client connections are
never touched, new requests go to the new target, in-flight ones finish on the old one,
the old target's idle upstream connections are closed at the switch, and busy ones are
closed when their response completes instead of going back to the pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import weakref
from typing import TYPE_CHECKING, Any, Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .outbox import OUTBOX

if TYPE_CHECKING:
    from .tunnel import Tunnel

MAX_IDLE_PER_TARGET = 100

ADDING, HEALTHY, UNHEALTHY = "adding", "healthy", "unhealthy"

# Response headers that are not copied verbatim to the client.
(
    _COPY,
    _CONTENT_TYPE,
    _CONTENT_LENGTH,
    _TRANSFER_ENCODING,
    _SET_COOKIE,
    _WRITER_AFFINITY,
    _UPGRADE,
    _HOP,
) = range(8)
_RESPONSE_HEADERS: dict[bytes, int] = {
    b"content-type": _CONTENT_TYPE,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"set-cookie": _SET_COOKIE,
    b"x-writer-affinity": _WRITER_AFFINITY,
    b"upgrade": _UPGRADE,
    b"connection": _HOP,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"proxy-authenticate": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
}
# The same codes by header name exactly as the upstream spells it, so the common names
# need no ``lower()``; filled as names are seen (bounded).
_RESPONSE_CODES: dict[bytes, int] = {}


def _response_code(name: bytes) -> int:
    code = _RESPONSE_HEADERS.get(name.lower(), _COPY)
    if len(_RESPONSE_CODES) < 1024 and len(name) <= 64:
        _RESPONSE_CODES[name] = code
    return code


_NO_SERVICE = object()  # Target.log_service before any request was logged

# Every live Target, for the server's sweep of --target-timeout deadlines.
LIVE_TARGETS: weakref.WeakSet[Target] = weakref.WeakSet()


class ResponseSink(Protocol):
    """What an upstream connection reports to (implemented by the exchange)."""

    def on_response_head(self, conn: UpstreamConnection) -> None: ...
    def on_response_body(self, body: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def after_upstream_read(self) -> None: ...
    def on_upstream_upgrade(self, conn: UpstreamConnection, leftover: bytes) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection, error: str) -> None: ...
    def on_upstream_pause(self, paused: bool) -> None: ...


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, 80
    return host, int(port)


def merge_headers(
    head_parts: list[bytes], other_headers: list[tuple[int, bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """A response's headers, in order, from ``UpstreamConnection.on_header``'s two lists."""
    merged: list[tuple[bytes, bytes]] = []
    index = 0
    for position, name, value in other_headers:
        while index < position:
            merged.append((head_parts[index], head_parts[index + 2]))
            index += 4
        merged.append((name, value))
    while index < len(head_parts):
        merged.append((head_parts[index], head_parts[index + 2]))
        index += 4
    return merged


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to a target; parses responses with httptools."""

    __slots__ = (
        "affinity_opt_out",
        "body_expected",
        "chunked",
        "content_length",
        "content_type",
        "head_parts",
        "interim",
        "keep_alive",
        "other_headers",
        "parser",
        "read_paused",
        "received",
        "reset_parser",
        "response_done",
        "set_cookies",
        "sink",
        "status",
        "target",
        "transport",
        "tunnel",
        "upgrade_headers",
        "uses",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.tunnel: Tunnel | None = None
        self.uses = 0
        self.reset_parser = False
        self.read_paused = False
        self.begin(None, False)
        self.uses = 0
        # Set by on_headers_complete before anything reads them (interim is reset there).
        self.status = 0
        self.keep_alive = False
        self.interim = False

    # --- life cycle -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def begin(self, sink: ResponseSink | None, head_request: bool) -> None:
        """Get ready for the response to the request about to be sent."""
        if self.reset_parser:
            self.parser = HttpResponseParser(self)
        # llhttp cannot be told that a response answers HEAD, so after one we use a
        # fresh parser rather than let it wait for a body that never comes.
        self.reset_parser = head_request
        self.body_expected = not head_request
        self.sink = sink
        self.uses += 1
        self.other_headers: list[tuple[int, bytes, bytes]] = []
        self.received = False
        self.response_done = False
        self.content_length = -1
        self.chunked = False
        self.head_parts: list[bytes] = []
        # Rare headers: lists only once one is seen.
        self.set_cookies: list[tuple[bytes, bytes]] | None = None
        self.upgrade_headers: list[bytes] | None = None
        self.content_type = b""
        self.affinity_opt_out = False

    def pause_reading(self) -> None:
        """Stop reading the response while the client cannot keep up."""
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # Also called when a connection goes back to the pool: a response that completed
        # while its client was slow must not leave the next user of the connection deaf.
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def detach(self) -> None:
        self.sink = None

    def close(self) -> None:
        self.sink = None
        if self.transport is not None:
            OUTBOX.close(self.transport)

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None:
            OUTBOX.abort(self.transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.target.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            return
        sink = self.sink
        self.sink = None
        if sink is not None:
            sink.on_upstream_lost(self, str(exc) if exc else "EOF")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(True)
        elif self.sink is not None:
            self.sink.on_upstream_pause(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(False)
        elif self.sink is not None:
            self.sink.on_upstream_pause(False)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.to_client(data)
            return
        sink = self.sink
        if sink is None:
            # Bytes on an idle pooled connection: it can no longer be trusted.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            sink.on_upstream_upgrade(self, data[offset:])
            return
        except HttpParserError as exc:
            if self.sink is sink and not self.response_done:
                self.sink = None
                self.abort()
                sink.on_upstream_lost(self, f"malformed response: {exc}")
                return
        if self.sink is sink:
            sink.after_upstream_read()

    # --- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        """Sort each header as it arrives, so the response head needs no second pass.

        A copied header goes to ``head_parts`` (name, ": ", value, CRLF) and nowhere else;
        any other one to ``other_headers`` with its position, so ``headers()`` can rebuild
        the complete list in order when it is needed (rarely).
        """
        code = _RESPONSE_CODES.get(name)
        if code is None:
            code = _response_code(name)
        if not code:  # _COPY
            self.head_parts += (name, b": ", value, b"\r\n")
            return
        if code == _CONTENT_TYPE:
            self.content_type = value
            self.head_parts += (name, b": ", value, b"\r\n")
            return
        self.other_headers.append((len(self.head_parts), name, value))
        if code == _CONTENT_LENGTH:
            self.content_length = int(value) if value.strip().isdigit() else -1
        elif code == _TRANSFER_ENCODING:
            if b"chunked" in value.lower():
                self.chunked = True
        elif code == _SET_COOKIE:
            if self.set_cookies is None:
                self.set_cookies = []
            self.set_cookies.append((name, value))
        elif code == _WRITER_AFFINITY:
            if value.strip().lower() == b"false":
                self.affinity_opt_out = True
        elif code == _UPGRADE:
            if self.upgrade_headers is None:
                self.upgrade_headers = []
            self.upgrade_headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        if status < 200:
            if status >= 100 and status != 101:
                self.interim = True
        elif status == 204 or status == 304:
            self.body_expected = False
        sink = self.sink
        if sink is not None:
            # The sink scans the headers once and records framing (content_length, chunked).
            sink.on_response_head(self)
        if self.interim:
            self.interim = False
            self.other_headers = []
            self.head_parts = []
            self.set_cookies = None
            self.upgrade_headers = None
            self.content_type = b""
            self.status = 0
            return
        if not self.body_expected and not self.response_done and status != 101:
            self.response_done = True
            if sink is not None:
                sink.on_response_complete()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None and not self.response_done:
            sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.status in (0, 101) or self.response_done:
            # An interim (1xx) message, a switch of protocols (handled as an upgrade), or
            # a bodiless response that was already completed at its headers.
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.response_done = True
        sink = self.sink
        if sink is not None:
            sink.on_response_complete()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Every header of the response (head) being read, in order, as (name, value)."""
        return merge_headers(self.head_parts, self.other_headers)

    @property
    def close_delimited(self) -> bool:
        return self.body_expected and not self.chunked and self.content_length < 0


class DrainableExchange(Protocol):
    def cancel_for_drain(self) -> None: ...


class Target:
    """An upstream ``host:port`` for one deploy: its pool, in-flight work and health."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.address_bytes = address.encode("latin-1")
        self.address_json = json.dumps(address)
        self.kamal_target_line = b"\r\nX-Kamal-Target: " + self.address_bytes + b"\r\n"
        # The access log's status, service and target pieces by status, for log_service.
        self.log_service: object = _NO_SERVICE
        self.log_placements: dict[int, str] = {}
        self.host, self.port = split_address(address)
        self.state = ADDING
        self.draining = False
        self.idle: list[UpstreamConnection] = []
        self.connections: set[UpstreamConnection] = set()
        self.inflight: set[DrainableExchange] = set()
        self.tunnels: set[Tunnel] = set()
        self.drain_waiters: list[tuple[set[DrainableExchange], asyncio.Future[None]]] = []
        try:
            ip = ipaddress.ip_address(self.host)
            self._literal: tuple[int, str] | None = (
                socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                self.host,
            )
        except ValueError:
            self._literal = None
        LIVE_TARGETS.add(self)

    def __repr__(self) -> str:
        return f"Target({self.address}, {self.state})"

    # --- pool -------------------------------------------------------------------------

    # acquire and release run once per proxied request: they test the transport directly
    # rather than through ``closed`` and ``detach``, one call each instead of three.

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        if self._literal is not None:
            family, host = self._literal
            candidates: list[tuple[int, Any]] = [(family, (host, self.port))]
        else:
            infos = await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            candidates = [(info[0], info[4]) for info in infos]
        last_error: OSError = OSError(f"no addresses for {self.host}")
        for family, address in candidates:
            # Made with IPPROTO_TCP so asyncio keeps TCP_NODELAY (see proxy-performance.md).
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            _, protocol = await loop.create_connection(lambda: UpstreamConnection(self), sock=sock)
            self.connections.add(protocol)
            return protocol
        raise last_error

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        conn.sink = None
        transport = conn.transport
        if (
            reusable
            and not self.draining
            and transport is not None
            and not transport.is_closing()
            and len(self.idle) < MAX_IDLE_PER_TARGET
        ):
            if conn.read_paused:
                # A response can complete while its client is slow: the next user of the
                # connection must not find it deaf.
                conn.resume_reading()
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        self.connections.discard(conn)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    # --- in-flight tracking and draining ------------------------------------------------

    def end(self, exchange: DrainableExchange) -> None:
        self.inflight.discard(exchange)
        for waiting, future in self.drain_waiters:
            waiting.discard(exchange)
            if not waiting and not future.done():
                future.set_result(None)

    async def drain(self, timeout: float, retire: bool = True) -> int:
        """Wait for the requests in flight now to finish; cancel whatever is left at the timeout.

        Upgraded connections (WebSockets) are closed at once, as they may never end.  A
        retired target (replaced by a deploy) also stops taking work and closes its pool;
        otherwise (pause, stop) it is usable again afterwards.  Returns how many requests
        had to be cancelled.
        """
        if retire:
            self.draining = True
            self.close_idle()
        for tunnel in list(self.tunnels):
            tunnel.close()
        waiting = set(self.inflight)
        if waiting:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (waiting, future)
            self.drain_waiters.append(entry)
            try:
                await asyncio.wait_for(future, max(timeout, 0))
            except TimeoutError:
                pass
            finally:
                self.drain_waiters.remove(entry)
        cancelled = 0
        for exchange in list(waiting):
            exchange.cancel_for_drain()
            self.inflight.discard(exchange)
            cancelled += 1
        if retire:
            self.close_idle()
        return cancelled

    def dispose(self) -> None:
        """Close everything now (used on remove and shutdown)."""
        self.draining = True
        self.close_idle()
