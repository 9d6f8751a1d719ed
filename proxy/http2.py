"""HTTP/2 for clients that negotiate ``h2`` over TLS (ALPN), as kamal-proxy offers it.

Each HTTP/2 stream is replayed as one HTTP/1.1 request on its own in-memory client
connection (``StreamConnection``, a ClientConnection), so routing, pause/stop, buffering,
limits, error pages, logs and metrics are exactly those of HTTP/1.1; upstreams always get
HTTP/1.1, as in kamal-proxy.  The HTTP/1.1 response that connection writes is parsed back
(httptools) into HEADERS and DATA frames.  The framing, HPACK and flow control are the
``h2`` library's.

Flow control both ways: a stream's request body is acknowledged to the client (which lets
it send more) only while its connection reads, and a response the client is slow to take
pauses the upstream once ``HIGH_WATER`` bytes wait for window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from httptools import HttpRequestParser, HttpResponseParser

from .downstream import ClientConnection
from .outbox import OUTBOX

if TYPE_CHECKING:
    from .server import ProxyServer

HIGH_WATER = 256 * 1024  # response bytes waiting for window before the upstream pauses
LOW_WATER = 64 * 1024

# Connection-specific fields (RFC 9113 §8.2.2): never sent in HTTP/2, and the HTTP/1.1
# request we build sets its own framing.
_CONNECTION_SPECIFIC = frozenset(
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


class Http2Connection(asyncio.Protocol):
    """One TLS client connection speaking HTTP/2."""

    def __init__(self, proxy: ProxyServer, port: int) -> None:
        self.proxy = proxy
        self.port = port
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.streams: dict[int, Stream] = {}
        self.transport: asyncio.Transport
        self.going_away = False

    # --- transport events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.proxy.connections.add(self)
        self.h2.initiate_connection()
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.proxy.logger.info("HTTP/2 protocol error", error=str(exc))
            self.send()
            self.close()
            return
        for event in events:
            self.handle(event)
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.client_gone()
        self.streams.clear()

    def pause_writing(self) -> None:
        for stream in self.streams.values():
            stream.client_pause(True)

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            stream.client_pause(False)

    # --- HTTP/2 events ------------------------------------------------------------------

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            if self.going_away:  # shutting down: the client may retry it elsewhere
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            new = Stream(self, event.stream_id)
            self.streams[event.stream_id] = new
            new.request_head(event.headers or [], event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.request_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.client_gone()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in list(self.streams.values()):
                stream.send_body()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    # --- output -------------------------------------------------------------------------

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            OUTBOX.defer(self.transport, data)

    def close(self) -> None:
        if not self.transport.is_closing():
            OUTBOX.close(self.transport)

    def stream_done(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if self.going_away and not self.streams:
            self.goodbye()

    def close_if_idle(self) -> bool:
        """Used at shutdown: refuse new streams, and say GOAWAY and close once the open
        ones are done (h2 sends nothing more after a GOAWAY, so it has to come last)."""
        self.going_away = True
        if self.streams:
            return False
        self.goodbye()
        return True

    def goodbye(self) -> None:
        if not self.transport.is_closing():
            self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)
            self.send()
            self.close()


class Stream(asyncio.Transport):
    """One HTTP/2 stream, and the transport its StreamConnection writes its response to."""

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.id = stream_id
        self.client = StreamConnection(conn.proxy, conn.port)
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
        self.reading = True

    # --- request: HTTP/2 in, HTTP/1.1 to the StreamConnection --------------------------

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
                cookies.append(value)  # HTTP/2 may split them; HTTP/1.1 wants one field
            elif name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name not in _CONNECTION_SPECIFIC:
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
            self.conn.h2.acknowledge_received_data(size, self.id)
            self.conn.send()

    def reply_status(self, status: int) -> None:
        self.conn.h2.send_headers(self.id, [(b":status", b"%d" % status)], end_stream=True)
        self.conn.send()
        self.done = True
        self.conn.stream_done(self.id)

    # --- the transport the StreamConnection sees ------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.done:
            return
        try:
            self.response.feed_data(bytes(data))
        except Exception as exc:  # our own HTTP/1.1 output; never expected to be malformed
            self.conn.proxy.logger.error("HTTP/2 response translation failed", error=repr(exc))
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

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
        if self.closing:
            return
        self.closing = True
        if self.headers_sent:
            self.response_complete = True
            self.send_body()
        else:
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        asyncio.get_running_loop().call_soon(self.client.connection_lost, None)

    def abort(self) -> None:
        """A response cut short (the upstream failed mid-body): reset the stream."""
        if self.closing:
            return
        self.closing = True
        self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        asyncio.get_running_loop().call_soon(self.client.connection_lost, None)

    # --- response: HTTP/1.1 from the StreamConnection, HTTP/2 to the client ---------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _CONNECTION_SPECIFIC:
            self.response_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.response.get_status_code()
        if status < 200:  # interim responses are not passed on
            self.response_headers = []
            return
        try:
            self.conn.h2.send_headers(
                self.id, [(b":status", b"%d" % status), *self.response_headers]
            )
        except h2.exceptions.StreamClosedError:
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
        h2conn = self.conn.h2
        try:
            while self.body:
                window = min(
                    h2conn.local_flow_control_window(self.id), h2conn.max_outbound_frame_size
                )
                if window <= 0:
                    break
                chunk = self.body[0]
                if len(chunk) > window:
                    self.body[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    self.body.pop(0)
                self.body_size -= len(chunk)
                h2conn.send_data(self.id, chunk)
            if self.response_complete and not self.body:
                h2conn.end_stream(self.id)
                self.done = True
                self.conn.stream_done(self.id)
        except h2.exceptions.StreamClosedError:  # the client reset it meanwhile
            self.client_gone()
        self.conn.send()
        self._pace_upstream()

    def _pace_upstream(self) -> None:
        waiting = self.body_size
        if not self.upstream_paused and waiting > HIGH_WATER:
            self.upstream_paused = True
            self.client.pause_writing()
        elif self.upstream_paused and waiting < LOW_WATER:
            self.upstream_paused = False
            self.client.resume_writing()

    def client_pause(self, paused: bool) -> None:
        """The TLS connection's own buffer is full (or drained): pace this upstream too."""
        if paused and not self.upstream_paused:
            self.upstream_paused = True
            self.client.pause_writing()
        elif not paused and self.upstream_paused and self.body_size < LOW_WATER:
            self.upstream_paused = False
            self.client.resume_writing()

    def reset(self, code: h2.errors.ErrorCodes) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the client closed it already
            self.conn.h2.reset_stream(self.id, code)
        self.conn.send()
        self.conn.stream_done(self.id)

    def client_gone(self) -> None:
        """The client reset the stream or the connection ended: stop the request."""
        self.done = True
        self.conn.streams.pop(self.id, None)
        if not self.closing:
            self.closing = True
            self.client.connection_lost(None)


class StreamConnection(ClientConnection):
    """The HTTP/1.1 side of one HTTP/2 stream: logs say HTTP/2.0."""

    __slots__ = ()

    def __init__(self, proxy: ProxyServer, port: int) -> None:
        super().__init__(proxy, "https", port)
        self.parser = _Http2RequestParser(self)


class _Http2RequestParser(HttpRequestParser):
    """httptools' request parser, reporting the client's protocol version as 2.0."""

    def get_http_version(self) -> str:
        return "2.0"
