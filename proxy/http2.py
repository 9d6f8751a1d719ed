"""HTTP/2 for clients that negotiate ``h2`` over TLS (ALPN), as kamal-proxy offers it.

Each stream becomes an HTTP/1.1 request (streams.py); this module is the HTTP/2 side: the
``h2`` library's framing, HPACK and flow control over the TLS transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .outbox import OUTBOX
from .streams import Stream, StreamGone

if TYPE_CHECKING:
    from .server import ProxyServer


class Http2Connection(asyncio.Protocol):
    """One TLS client connection speaking HTTP/2."""

    http_version = "2.0"

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
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.proxy.logger.info("HTTP/2 protocol error", error=str(exc))
            self.flush()
            self.close()
            return
        for event in events:
            self.handle(event)
        self.flush()

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

    # --- what a Stream uses (streams.Multiplexer) ---------------------------------------

    def client_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def send_head(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None

    def window(self, stream_id: int) -> int:
        try:
            window = self.h2.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        return min(window, self.h2.max_outbound_frame_size)

    def send_data(self, stream_id: int, data: bytes) -> None:
        try:
            self.h2.send_data(stream_id, data)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None

    def end_stream(self, stream_id: int) -> None:
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None

    def reset_stream(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the client closed it already
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def acknowledge(self, stream_id: int, size: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.acknowledge_received_data(size, stream_id)

    # --- output -------------------------------------------------------------------------

    def flush(self) -> None:
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

    def force_close(self) -> None:
        OUTBOX.abort(self.transport)

    def goodbye(self) -> None:
        if not self.transport.is_closing():
            self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)
            self.flush()
            self.close()
