"""The client side: one asyncio Protocol per accepted connection, parsing with httptools.

Requests on a keep-alive connection are served one at a time; pipelined requests queue up
(reading pauses while they wait).  Malformed input never reaches a service: a bad request
line, broken chunked framing or a Content-Length + Transfer-Encoding pair gets 400, a
header block over the limit gets 431, and a client that trickles its headers (slowloris)
is answered 400 and disconnected after the header timeout.

Hot path: the parser callbacks only collect the request line and headers; the header
timeout is only registered when a chunk ends inside a request head (a request that
arrives whole never touches the deadline table), and reading is only resumed when it
was actually paused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from .error_pages import CONTENT_TYPE, reason_phrase
from .exchange import Exchange
from .logs import escape, escape_bytes
from .outbox import OUTBOX

if TYPE_CHECKING:
    from .server import ProxyServer
    from .tunnel import Tunnel


_monotonic = time.monotonic
_METHOD_NAMES = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class _HeadersTooLarge(Exception):
    pass


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_deadline",
        "_head_bytes",
        "_header_timeout",
        "_headers",
        "_idle_timeout",
        "_in_message",
        "_max_header_bytes",
        "_reading_head",
        "_upgrade_pending",
        "_url",
        "active",
        "alt_svc",
        "client_addr",
        "client_addr_json",
        "client_port",
        "closed",
        "forwarded_tail",
        "https",
        "incoming",
        "log_agent",
        "log_client",
        "log_host",
        "log_host_raw",
        "log_port",
        "log_tail",
        "log_version",
        "parser",
        "peer_bytes",
        "port",
        "proxy",
        "queue",
        "read_paused",
        "scheme",
        "scheme_bytes",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(self, proxy: ProxyServer, scheme: str, port: int) -> None:
        self.proxy = proxy
        self.scheme = scheme
        self.scheme_bytes = scheme.encode()
        self.https = scheme == "https"
        self.port = port
        # With --http3, responses on the TCP HTTPS listener advertise it (Alt-Svc).
        self.alt_svc = proxy.alt_svc if self.https else b""
        self.active: Exchange | None = None
        self.incoming: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.tunnel: Tunnel | None = None
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.client_addr = ""
        self.client_addr_json = '""'
        self.client_port = ""
        self.peer_bytes = b""
        # Request-independent pieces of the upstream request and of the access-log line.
        self.forwarded_tail = (
            b"\r\nX-Forwarded-Proto: " + self.scheme_bytes + b"\r\nX-Forwarded-Host: "
        )
        self.log_port = f',"port":{port},"path":'
        self.log_client = ',"client_addr":"","client_port":"","remote_addr":'
        # Log-line pieces for the values seen last on this connection (exchange.finish).
        self.log_host_raw: bytes | None = None
        self.log_host = ""
        self.log_agent: bytes | None = None
        self.log_version = ""
        self.log_tail = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._reading_head = False
        self._in_message = False
        # What this connection waits for in proxy.deadlines: "", "idle" or "head".
        self._deadline = ""
        tuning = proxy.tuning
        self._header_timeout = tuning.header_timeout
        self._max_header_bytes = tuning.max_header_bytes
        self._idle_timeout = tuning.idle_timeout
        self._upgrade_pending: list[bytes] | None = None
        self.parser = HttpRequestParser(self)

    # --- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            address = str(peer[0])
            # Dual-stack listener: report IPv4 clients as IPv4, as Go does.
            self.client_addr = (
                address[7:] if address.startswith("::ffff:") and "." in address else address
            )
            self.client_port = str(peer[1])
        self.client_addr_json = escape(self.client_addr)
        self.peer_bytes = self.client_addr.encode("latin-1")
        self.log_client = (
            f',"client_addr":{self.client_addr_json},"client_port":"{self.client_port}",'
            '"remote_addr":'
        )
        self.proxy.connections.add(self)
        self._watch_idle()

    def log_host_piece(self, host_raw: bytes) -> str:
        """The log line's ``"host":…,"port":…,"path":``, kept for the next request."""
        piece = f'"host":{escape_bytes(host_raw)}{self.log_port}'
        self.log_host_raw = host_raw
        self.log_host = piece
        return piece

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self._unwatch()
        if self.tunnel is not None:
            self.tunnel.close()
        active = self.active
        if active is not None:
            active.client_gone()
        self.queue.clear()

    def pause_writing(self) -> None:
        """The client reads slower than the upstream writes: stop reading the upstream."""
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_upstream(True)
            return
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.pause_upstream(False)
            return
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    def pause_reading(self) -> None:
        self.read_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.read_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.to_upstream(data)
            return
        if self._upgrade_pending is not None:
            self._upgrade_pending.append(data)
            self.pause_reading()
            return
        if not self._in_message or self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            self._upgrade_pending = [rest] if rest else []
            self.pause_reading()
            return
        except HttpParserError as exc:
            self._parse_failed(exc)
            return
        if self._head_bytes:
            # This chunk ended inside a request head (or before one began; a completed
            # head resets the count): bound its size, and start the header-read deadline
            # (the sweep in server.py enforces it).
            if self._reading_head and self._head_bytes > self._max_header_bytes:
                self._reject(431)
            elif self._deadline != "head" and self._header_timeout > 0:
                self.proxy.deadlines[self] = _monotonic() + self._header_timeout
                self._deadline = "head"

    # --- parser callbacks ---------------------------------------------------------------

    # No on_message_begin: on_url is the first callback of every request (llhttp also
    # reports a URL cut by the end of a chunk), so it marks the start of a message.

    def on_url(self, url: bytes) -> None:
        self._in_message = True
        self._reading_head = True
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        headers = self._headers
        # The size the limit applies to: the URL, and each header as "name: value\r\n".
        size = len(self._url) + 4 * len(headers)
        for name, value in headers:
            size += len(name) + len(value)
        if size > self._max_header_bytes:
            raise _HeadersTooLarge()
        if self._deadline:
            self._deadline = ""
            self.proxy.deadlines.pop(self, None)
        parser = self.parser
        raw_method = parser.get_method()
        # Read keep-alive now: llhttp resets its flags once the message completes.
        exchange = Exchange(
            self,
            _METHOD_NAMES.get(raw_method) or raw_method.decode("latin-1"),
            raw_method,
            self._url,
            headers,
            parser.get_http_version(),
            parser.should_keep_alive(),
            parser.should_upgrade(),
        )
        self._url = b""
        self._headers = []
        self.incoming = exchange
        if self.active is None and not self.queue:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.incoming
        if exchange is None:
            return
        if exchange is self.active:
            exchange.request_body(body)
        elif exchange.pending_body:
            exchange.pending_body.append(body)
        else:
            exchange.pending_body = [body]  # it was the shared empty list

    def on_message_complete(self) -> None:
        self._in_message = False
        exchange = self.incoming
        self.incoming = None
        if exchange is None:
            return
        if exchange is self.active:
            exchange.request_body_done()
        else:
            exchange.body_done = True
        if self.active is None:
            self._advance()

    # --- exchange sequencing ------------------------------------------------------------

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self.active:
            return
        self.active = None
        if self.closed:
            return
        if exchange.close_after or self.proxy.shutting_down:
            self._close()
            return
        if self.incoming is exchange:
            return  # the rest of its body is still arriving; on_message_complete advances
        if self.queue:
            self._advance()
        elif self.incoming is None:
            # The common case: the connection is idle again.
            if self.read_paused:
                self.resume_reading()
            if self._idle_timeout > 0:
                self._watch_idle()

    def _advance(self) -> None:
        if self.closed or self.active is not None:
            return
        if self.queue:
            exchange = self.queue.popleft()
            self.active = exchange
            # A queued request's body (if any) is already in pending_body and body_done is
            # set; start() and the upstream attach take both into account.
            exchange.start()
            return
        if self.incoming is None and not self.transport.is_closing():
            self.resume_reading()
            self._watch_idle()

    def start_tunnel(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        pending = self._upgrade_pending or []
        self._upgrade_pending = None
        for chunk in pending:
            tunnel.to_upstream(chunk)
        self.resume_reading()

    # --- malformed input and timeouts ---------------------------------------------------

    def _parse_failed(self, exc: Exception) -> None:
        active = self.active
        incoming = self.incoming
        if incoming is not None and incoming is active and not incoming.finished:
            # The head was fine; the body framing is broken (e.g. a bad chunk size).
            incoming.request_body_malformed()
            self._close()
            return
        if active is not None:
            if not active.keep_alive:
                return  # bytes after `Connection: close`; the connection ends after this response
            active.close_after = True
            return
        status = 431 if isinstance(exc.__context__, _HeadersTooLarge) else 400
        self._reject(status)

    def _reject(self, status: int) -> None:
        body = f"<h1>{status} {reason_phrase(status)}</h1>".encode()
        self.proxy.logger.info("Malformed request", client_addr=self.client_addr, status=status)
        if not self.transport.is_closing():
            OUTBOX.write(
                self.transport,
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (status, reason_phrase(status).encode(), CONTENT_TYPE, len(body), body),
            )
        self._close()

    def _watch_idle(self) -> None:
        timeout = self._idle_timeout
        if timeout > 0:
            self.proxy.deadlines[self] = _monotonic() + timeout
            self._deadline = "idle"
        elif self._deadline:
            self._unwatch()

    def _unwatch(self) -> None:
        if self._deadline:
            self._deadline = ""
            self.proxy.deadlines.pop(self, None)

    def on_deadline(self) -> None:
        """Called by the server's deadline sweep."""
        kind, self._deadline = self._deadline, ""
        if kind == "head" and (self._reading_head or (self.active is None and self._head_bytes)):
            self._reject(400)  # slowloris: the head did not arrive within the header timeout
        elif kind == "idle" and self.active is None and not self._in_message:
            self._close()

    def _close(self) -> None:
        self._unwatch()
        if not self.transport.is_closing():
            OUTBOX.close(self.transport)

    def force_close(self) -> None:
        """Used at shutdown when the grace period is over."""
        OUTBOX.abort(self.transport)

    def close_if_idle(self) -> bool:
        """Used at shutdown: close at once unless a request is being served."""
        if self.active is None and self.tunnel is None and not self._in_message:
            self._close()
            return True
        return False
