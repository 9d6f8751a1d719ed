"""The HTTP/1.1 side of HTTP/2 and HTTP/3 streams.

Each stream of a multiplexed client connection is replayed as one HTTP/1.1 request on its
own in-memory client connection (``StreamConnection``, a ClientConnection), so routing,
pause/stop, buffering, limits, error pages, logs and metrics are exactly those of HTTP/1.1,
and upstreams always get HTTP/1.1, as in kamal-proxy.  The HTTP/1.1 response that
connection writes is parsed back (httptools) and handed to the multiplexed connection
(``Multiplexer``: http2.py, http3.py), which frames it.

Flow control both ways: a stream's request body is acknowledged to the client (which lets
it send more) only while its connection reads, and a response the client is slow to take
pauses the upstream once ``HIGH_WATER`` bytes wait for the client's window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from httptools import HttpRequestParser, HttpResponseParser

from .downstream import ClientConnection

if TYPE_CHECKING:
    from .server import ProxyServer

HIGH_WATER = 256 * 1024  # response bytes waiting for window before the upstream pauses
LOW_WATER = 64 * 1024

# Connection-specific fields (RFC 9113 §8.2.2, RFC 9114 §4.2): never sent in HTTP/2 or 3,
# and the HTTP/1.1 request we build sets its own framing.
CONNECTION_SPECIFIC = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"host",
        b"expect",
    }
)


class StreamGone(Exception):
    """The client closed or reset the stream."""


class Multiplexer(Protocol):
    """What a Stream needs from its HTTP/2 or HTTP/3 connection."""

    proxy: ProxyServer
    port: int
    http_version: str  # as logged: "2.0", "3.0"

    def client_info(self, name: str, default: Any = None) -> Any:
        """The client transport's ``get_extra_info``."""

    def send_head(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """Send a response head (``:status`` first).  Raises StreamGone."""

    def window(self, stream_id: int) -> int:
        """How many body bytes may be sent now.  Raises StreamGone."""

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Raises StreamGone."""

    def end_stream(self, stream_id: int) -> None:
        """Raises StreamGone."""

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream (an internal error), if the client has not closed it."""

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Let the client send ``size`` more request body bytes."""

    def flush(self) -> None:
        """Send what the calls above produced."""

    def stream_done(self, stream_id: int) -> None:
        """The stream has ended either way; forget it."""


class Stream(asyncio.Transport):
    """One request stream, and the transport its StreamConnection writes its response to."""

    def __init__(self, conn: Multiplexer, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.id = stream_id
        self.client = StreamConnection(conn.proxy, conn.port, conn.http_version)
        self.chunked_request = False
        self.unacknowledged = 0  # request body bytes not yet credited back to the client
        self.response = HttpResponseParser(self)
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.head_only = False
        self.headers_sent = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.response_complete = False
        self.done = False
        self.closing = False
        self.upstream_paused = False
        self.backlogged = False
        self.connection_full = False
        self.reading = True

    # --- request: to the StreamConnection as HTTP/1.1 ---------------------------------

    def request_head(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        pseudo: dict[bytes, bytes] = {}
        fields: list[bytes] = []
        cookies: list[bytes] = []
        host = b""
        length: bytes | None = None
        for name, value in headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value)  # HTTP/2 and 3 may split them; HTTP/1.1 wants one
            elif name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name not in CONNECTION_SPECIFIC:
                fields += (name, b": ", value, b"\r\n")
        method = pseudo.get(b":method", b"GET")
        self.head_only = method == b"HEAD"
        if method == b"CONNECT":
            self.reply_status(405)
            return
        head = [
            method,
            b" ",
            pseudo.get(b":path", b"/"),
            b" HTTP/1.1\r\nHost: ",
            pseudo.get(b":authority") or host,
            b"\r\n",
            *fields,
        ]
        if cookies:
            head += (b"cookie: ", b"; ".join(cookies), b"\r\n")
        if length is not None:
            head += (b"content-length: ", length, b"\r\n")
        elif not ended:
            self.chunked_request = True
            head.append(b"transfer-encoding: chunked\r\n")
        # One request per StreamConnection: it closes once the response is written.
        head.append(b"connection: close\r\n\r\n")
        self.client.connection_made(self)
        self.client.data_received(b"".join(head))

    def request_data(self, data: bytes, flow_controlled: int) -> None:
        if self.done:
            self._acknowledge(flow_controlled)
            return
        self.unacknowledged += flow_controlled
        if data:
            self.client.data_received(
                b"%x\r\n%s\r\n" % (len(data), data) if self.chunked_request else data
            )
        if self.reading:
            self._acknowledge(self.unacknowledged)
            self.unacknowledged = 0

    def request_end(self) -> None:
        if self.chunked_request and not self.done:
            self.client.data_received(b"0\r\n\r\n")

    def _acknowledge(self, size: int) -> None:
        if size and not self.done:
            self.conn.acknowledge(self.id, size)
            self.conn.flush()

    def reply_status(self, status: int) -> None:
        self.done = True
        with contextlib.suppress(StreamGone):
            self.conn.send_head(self.id, [(b":status", b"%d" % status)], True)
        self.conn.flush()
        self.conn.stream_done(self.id)

    # --- the transport the StreamConnection sees ------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.client_info(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.done:
            return
        try:
            self.response.feed_data(bytes(data))
        except Exception as exc:  # our own HTTP/1.1 output; never expected to be malformed
            self.conn.proxy.logger.error("Response translation failed", error=repr(exc))
            self.reset()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        if self.unacknowledged:
            self._acknowledge(self.unacknowledged)
            self.unacknowledged = 0

    def close(self) -> None:
        """The StreamConnection is done: the response ends here (a response framed by the
        end of the connection ends the same way); without a head there is nothing to end."""
        self._end(complete=self.headers_sent)

    def abort(self) -> None:
        """A response cut short (the upstream failed mid-body): reset the stream."""
        self._end(complete=False)

    def _end(self, complete: bool) -> None:
        if self.closing:
            return
        self.closing = True
        if complete:
            self.response_complete = True
            self.send_body()
        else:
            self.reset()
        asyncio.get_running_loop().call_soon(self.client.connection_lost, None)

    # --- response: HTTP/1.1 from the StreamConnection, to the Multiplexer ------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC:
            self.response_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.response.get_status_code()
        if status < 200:  # interim responses are not passed on
            self.response_headers = []
            return
        try:
            self.conn.send_head(
                self.id, [(b":status", b"%d" % status), *self.response_headers], False
            )
        except StreamGone:
            self.client_gone()
            return
        self.headers_sent = True
        self.response_headers = []
        if self.head_only:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.body_size += len(body)
        self.send_body()

    def on_message_complete(self) -> None:
        if not self.headers_sent or self.response_complete:
            return
        self.response_complete = True
        self.send_body()

    def send_body(self) -> None:
        """Send what the client's window allows; end the stream when all is sent."""
        if self.done:
            return
        conn = self.conn
        try:
            while self.body:
                window = conn.window(self.id)
                if window <= 0:
                    break
                chunk = self.body[0]
                if len(chunk) > window:
                    self.body[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    self.body.pop(0)
                self.body_size -= len(chunk)
                conn.send_data(self.id, chunk)
            if self.response_complete and not self.body:
                conn.end_stream(self.id)
                self.done = True
                conn.stream_done(self.id)
        except StreamGone:  # the client reset it meanwhile
            self.client_gone()
        conn.flush()
        self._pace_upstream()

    def _pace_upstream(self) -> None:
        """The upstream is read only while the client keeps up: neither this stream's
        backlog (bytes waiting for window) nor the client connection's buffer is full."""
        if self.body_size > HIGH_WATER:
            self.backlogged = True
        elif self.body_size < LOW_WATER:
            self.backlogged = False
        paused = self.backlogged or self.connection_full
        if paused != self.upstream_paused:
            self.upstream_paused = paused
            if paused:
                self.client.pause_writing()
            else:
                self.client.resume_writing()

    def client_pause(self, paused: bool) -> None:
        """The client connection's own buffer is full (or drained)."""
        self.connection_full = paused
        self._pace_upstream()

    def reset(self) -> None:
        if self.done:
            return
        self.done = True
        self.conn.reset_stream(self.id)
        self.conn.flush()
        self.conn.stream_done(self.id)

    def client_gone(self) -> None:
        """The client reset the stream or the connection ended: stop the request."""
        self.done = True
        self.conn.stream_done(self.id)
        if not self.closing:
            self.closing = True
            self.client.connection_lost(None)


class StreamConnection(ClientConnection):
    """The HTTP/1.1 side of one stream; logs give the client's real HTTP version."""

    __slots__ = ()

    def __init__(self, proxy: ProxyServer, port: int, http_version: str) -> None:
        super().__init__(proxy, "https", port)
        if http_version == "3.0":
            self.alt_svc = b""  # HTTP/3 responses don't advertise HTTP/3
        parser = _VersionParser(self)
        parser.version = http_version
        self.parser = parser


class _VersionParser(HttpRequestParser):
    """httptools' request parser, reporting the client's protocol version."""

    version = "1.1"

    def get_http_version(self) -> str:
        return self.version
