"""HTTP/3 with ``run --http3``, as kamal-proxy: QUIC on UDP at the HTTPS port, TLS 1.3 and
ALPN ``h3``, certificates chosen by SNI like the TCP listener's.

QUIC, TLS 1.3 and HTTP/3 framing are ``aioquic``'s.  Each request stream becomes an
HTTP/1.1 request on the same bridge as HTTP/2 (streams.py).  Two things aioquic does not
offer are added here, each in one place:

- a certificate per server name: aioquic takes one certificate per configuration, so each
  connection's TLS context reads the ClientHello's server name first and sets the
  certificate before aioquic answers it (``_choose_certificate_by_name``);
- send pacing: aioquic queues whatever it is given, so a stream's window is what is left
  of ``SEND_BUFFER`` after the bytes the client has not acknowledged yet, and the window is
  looked at again whenever the client's packets (with their acknowledgements) arrive.

An automatic certificate is only used once it is in memory: HTTP/3 clients find the QUIC
listener through the ``Alt-Svc`` header of a TCP response, whose handshake got it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioquic._buffer import Buffer
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)
from aioquic.quic.packet import pull_quic_header
from aioquic.tls import AlertHandshakeFailure, pull_client_hello
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .acme import self_signed
from .streams import Stream, StreamGone
from .tls import service_for_name

if TYPE_CHECKING:
    from .acme import CertificateManager
    from .logs import JsonLogger
    from .router import Router
    from .server import ProxyServer

SEND_BUFFER = 256 * 1024  # unacknowledged response bytes per stream
Identity = tuple[x509.Certificate, list[x509.Certificate], Any]  # leaf, chain, private key


class Certificates:
    """Server name -> the certificate the TCP listener would serve, as aioquic wants it."""

    def __init__(
        self, router: Router, certificates: CertificateManager, logger: JsonLogger
    ) -> None:
        self.router = router
        self.certificates = certificates
        self.logger = logger
        self._loaded: dict[tuple[str, str], tuple[float, Identity]] = {}

    def __call__(self, server_name: str) -> Identity | None:
        name, service = service_for_name(self.router, server_name.lower().rstrip("."))
        if service is None:
            self.logger.info(
                "TLS handshake error", error="unknown server name", host=name, proto="HTTP/3.0"
            )
            return None
        if service.ssl_context is not None:
            options = service.options
            files = (options.tls_certificate_path, options.tls_private_key_path)
        else:
            path = self.certificates.ready_path(name)
            if path is None:  # not obtained yet: the TCP listener's first handshake gets it
                self.logger.info(
                    "TLS handshake error", error="no certificate yet", host=name, proto="HTTP/3.0"
                )
                return None
            files = (str(path), str(path))
        return self._load(files)

    def _load(self, files: tuple[str, str]) -> Identity | None:
        try:
            stamp = max(os.stat(f).st_mtime for f in files)
            cached = self._loaded.get(files)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            with open(files[0], "rb") as cert_file, open(files[1], "rb") as key_file:
                chain = x509.load_pem_x509_certificates(cert_file.read())
                key = serialization.load_pem_private_key(key_file.read(), password=None)
        except (OSError, ValueError):
            return None
        identity: Identity = (chain[0], chain[1:], key)
        self._loaded[files] = (stamp, identity)
        return identity


def _choose_certificate_by_name(
    quic: QuicConnection, choose: Callable[[str], Identity | None]
) -> None:
    """Before aioquic's TLS server handles the ClientHello, set the certificate for its
    server name; no certificate fails the handshake."""
    initialize = quic._initialize

    def initialize_then_hook(peer_cid: bytes) -> None:
        initialize(peer_cid)
        tls = quic.tls
        handle_hello = tls._server_handle_hello

        def handle_hello_for_name(input_buf: Buffer, initial: Buffer, handshake: Buffer) -> None:
            start = input_buf.tell()
            hello = pull_client_hello(input_buf)
            input_buf.seek(start)
            identity = choose(hello.server_name or "")
            if identity is None:
                raise AlertHandshakeFailure("unknown server name")
            tls.certificate, tls.certificate_chain, tls.certificate_private_key = identity
            handle_hello(input_buf, initial, handshake)

        tls._server_handle_hello = handle_hello_for_name  # type: ignore[method-assign,assignment]

    quic._initialize = initialize_then_hook  # type: ignore[method-assign]


class Http3Connection(QuicConnectionProtocol):
    """One QUIC client connection speaking HTTP/3 (a streams.Multiplexer)."""

    http_version = "3.0"

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        proxy: ProxyServer,
        port: int,
        choose: Callable[[str], Identity | None],
    ) -> None:
        super().__init__(quic, stream_handler)
        self.proxy = proxy
        self.port = port
        self.h3: H3Connection | None = None
        self.streams: dict[int, Stream] = {}
        self.peer: Any = None
        self.going_away = False
        _choose_certificate_by_name(quic, choose)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.peer is None:
            self.peer = addr
        super().datagram_received(data, addr)
        # The client's packets carry its acknowledgements: windows may have opened.
        for stream in list(self.streams.values()):
            if stream.body:
                stream.send_body()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
            self.proxy.connections.add(self)
        elif isinstance(event, StreamReset | StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.client_gone()
        elif isinstance(event, ConnectionTerminated):
            self.proxy.connections.discard(self)
            for stream in list(self.streams.values()):
                stream.client_gone()
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self.handle(h3_event)

    def handle(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:  # trailers: not passed on
                if event.stream_ended:
                    stream.request_end()
                return
            if self.going_away:
                self.reset_stream(event.stream_id, ErrorCode.H3_REQUEST_REJECTED)
                self.transmit()
                return
            stream = Stream(self, event.stream_id)
            self.streams[event.stream_id] = stream
            stream.request_head(list(event.headers), event.stream_ended)
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_data(event.data, 0)
                if event.stream_ended:
                    stream.request_end()

    # --- what a Stream uses (streams.Multiplexer) ---------------------------------------

    def client_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        return self._transport.get_extra_info(name, default) if self._transport else default

    def send_head(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        assert self.h3 is not None
        try:
            self.h3.send_headers(stream_id, headers, end_stream=end)
        except (RuntimeError, ValueError):  # aioquic: the stream was reset
            raise StreamGone from None

    def window(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            raise StreamGone
        return max(0, SEND_BUFFER - len(stream.sender._buffer))

    def send_data(self, stream_id: int, data: bytes) -> None:
        assert self.h3 is not None
        try:
            self.h3.send_data(stream_id, data, end_stream=False)
        except (RuntimeError, ValueError):
            raise StreamGone from None

    def end_stream(self, stream_id: int) -> None:
        assert self.h3 is not None
        try:
            self.h3.send_data(stream_id, b"", end_stream=True)
        except (RuntimeError, ValueError):
            raise StreamGone from None

    def reset_stream(self, stream_id: int, code: int = ErrorCode.H3_INTERNAL_ERROR) -> None:
        with contextlib.suppress(RuntimeError, ValueError):  # already closed
            self._quic.reset_stream(stream_id, code)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """QUIC's receive windows are aioquic's to manage."""

    def flush(self) -> None:
        self.transmit()

    def stream_done(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    # --- shutdown -------------------------------------------------------------------------

    def close_if_idle(self) -> bool:
        """Used at shutdown (again and again): refuse new streams, and close once every
        response is done and acknowledged (aioquic drops unsent data when it closes)."""
        self.going_away = True
        if self.streams or self._responses_unacknowledged():
            return False
        self.close()
        return True

    def _responses_unacknowledged(self) -> bool:
        # aioquic forgets a stream once both directions are finished and acknowledged;
        # request streams are the client-initiated bidirectional ones (id % 4 == 0).
        return any(stream_id % 4 == 0 for stream_id in self._quic._streams)

    def force_close(self) -> None:
        self.close()


class Http3Server(QuicServer):
    """aioquic's server; closing it stops new connections and lets open ones finish."""

    accepting = True

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.accepting and isinstance(data, bytes):
            try:
                header = pull_quic_header(
                    Buffer(data=data),
                    host_cid_length=self._configuration.connection_id_length,
                )
            except ValueError:
                return
            if header.destination_cid not in self._protocols:
                return
        super().datagram_received(data, addr)

    def close(self) -> None:
        self.accepting = False


async def start_http3(
    proxy: ProxyServer, port: int, router: Router, certificates: CertificateManager
) -> Http3Server:
    """Listen on UDP ``port`` (every interface).  Raises OSError when it cannot bind."""
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    # aioquic insists on a certificate up front; every handshake replaces it by name.
    configuration.certificate, configuration.private_key = self_signed("shipyard-proxy")
    choose = Certificates(router, certificates, proxy.logger)
    # Our own socket, dual-stack like the TCP listeners, so a bind error says why.
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: Http3Server(
            configuration=configuration,
            create_protocol=lambda quic, stream_handler=None: Http3Connection(
                quic, stream_handler, proxy=proxy, port=port, choose=choose
            ),
        ),
        sock=sock,
    )
    return server
