"""TLS termination: the HTTPS listener and certificate choice by SNI.

A service's certificate is its custom one (``--tls-certificate-path``) or an automatic one
from the ACME CA (acme.py).  An automatic certificate may have to be obtained before the
handshake can go on, which takes seconds, and Python's SNI callback cannot wait.  So the
listener accepts connections itself and peeks at each ClientHello (MSG_PEEK: the bytes stay
in the socket for the real handshake), gets the certificate for its server name if needed,
and only then hands the socket to the event loop's TLS machinery, whose SNI callback then
finds every certificate in memory.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .acme import ACME_TLS_ALPN, AcmeError

if TYPE_CHECKING:
    from .acme import CertificateManager
    from .logs import JsonLogger
    from .router import Router
    from .service import Service

HANDSHAKE_TIMEOUT = 10.0  # seconds for the ClientHello, and again for the handshake
CERTIFICATE_WAIT = 100.0  # seconds a handshake waits for a certificate from the CA
ACCEPT_RETRY = 0.1  # seconds without accepting after running out of file descriptors
_MAX_HELLO = 16 * 1024 + 5  # one TLS record


class CertificateError(Exception):
    pass


def load_certificate(cert_path: str, key_path: str | None = None) -> ssl.SSLContext:
    """A context serving one certificate (its key may be in the same file)."""
    context = _server_context()
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError, ValueError):
        raise CertificateError("unable to load certificate") from None
    return context


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # acme-tls/1 is answered before this context is used (TlsListener._handshake).
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def alt_svc_header(https_port: int) -> bytes:
    """With --http3, what every response on the TCP HTTPS listener advertises (the format
    of quic-go's SetQUICHeaders)."""
    return b'Alt-Svc: h3=":%d"; ma=2592000\r\n' % https_port


class AlpnSwitch(asyncio.Protocol):
    """The protocol of a new HTTPS connection until its handshake is done: then it hands
    the transport to HTTP/2 or HTTP/1.1, whichever the client and ALPN settled on."""

    def __init__(
        self,
        http1: Callable[[], asyncio.Protocol],
        http2: Callable[[], asyncio.Protocol],
    ) -> None:
        self.http1 = http1
        self.http2 = http2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = self.http2() if chosen == "h2" else self.http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def service_for_name(router: Router, server_name: str) -> tuple[str, Service | None]:
    """The name a handshake is for (the default TLS host when SNI is empty) and the TLS
    service that answers it, if any."""
    name = server_name or router.default_tls_host
    service = router.root_service_for_host(name) if name else None
    if service is None or not service.tls_enabled:
        return name, None
    return name, service


def server_context(
    router: Router, logger: JsonLogger, certificates: CertificateManager
) -> ssl.SSLContext:
    """The listener's context: it holds no certificate itself, SNI picks the service's."""
    context = _server_context()

    def select(sslobj: ssl.SSLObject, server_name: str | None, _base: ssl.SSLContext) -> int | None:
        if not server_name:
            if not router.default_tls_host:
                logger.info("TLS handshake error", error="no server name provided")
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            logger.warn("No server name; using default TLS hostname", host=router.default_tls_host)
        name, service = service_for_name(router, (server_name or "").lower().rstrip("."))
        if service is None:
            logger.info("TLS handshake error", error="unknown server name", host=name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        chosen = service.ssl_context or certificates.ready_context(name)
        if chosen is None:  # the listener could not get one; it logged why
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        sslobj.context = chosen
        return None

    context.sni_callback = select
    return context


class _CloseAfterHandshake(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class TlsListener:
    """Accepts HTTPS connections on ``sock``; see the module docstring."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        router: Router,
        certificates: CertificateManager,
        logger: JsonLogger,
        protocol_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.sock = sock
        self.context = context
        self.router = router
        self.certificates = certificates
        self.logger = logger
        self.protocol_factory = protocol_factory
        self.loop = asyncio.get_running_loop()
        self.handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in list(self.handshakes):
            task.cancel()

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, then let the loop run
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, and pause accepting a moment
                self.logger.error("Accept failed", error=str(exc))
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._handshake(conn))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    def _resume_accepting(self) -> None:
        if self.sock.fileno() >= 0:  # not closed meanwhile
            self.loop.add_reader(self.sock.fileno(), self._accept)

    async def _handshake(self, conn: socket.socket) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                hello = await self._peek_hello(conn)
            context, protocol_factory = self.context, self.protocol_factory
            if hello is not None and ACME_TLS_ALPN in hello.alpn:
                # The CA validating a TLS-ALPN-01 challenge: only its certificate, then close.
                challenge = self.certificates.responders.tls_alpn_01.get(hello.server_name)
                if challenge is None:
                    conn.close()
                    return
                context, protocol_factory = challenge, _CloseAfterHandshake
            elif hello is not None:
                await self._certificate_for(hello.server_name)
            await self.loop.connect_accepted_socket(
                protocol_factory,
                conn,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    async def _certificate_for(self, server_name: str) -> None:
        """Wait for an automatic certificate the handshake will need (no-op otherwise)."""
        name, service = service_for_name(self.router, server_name)
        if service is None or service.ssl_context is not None:
            return
        if self.certificates.ready_context(name) is not None:
            return
        try:
            async with asyncio.timeout(CERTIFICATE_WAIT):
                await self.certificates.ensure(name, service)
        except (AcmeError, TimeoutError) as exc:
            self.logger.error(
                "TLS handshake error",
                error=f"no certificate: {exc or 'timed out'}",
                host=name,
                service=service.name,
            )

    async def _peek_hello(self, conn: socket.socket) -> ClientHello | None:
        """The ClientHello, or None when the bytes are not one we can read (the handshake
        then fails or succeeds on its own)."""
        fd = conn.fileno()
        while True:
            readable = self.loop.create_future()
            self.loop.add_reader(fd, readable.set_result, None)
            try:
                await readable
            finally:
                self.loop.remove_reader(fd)
            data = conn.recv(_MAX_HELLO, socket.MSG_PEEK)
            if not data:
                raise ConnectionError("closed before the ClientHello")
            try:
                return parse_client_hello(data)
            except IncompleteHello:
                if len(data) >= _MAX_HELLO:
                    return None
                # The rest of the record is on its way; the socket stays readable until
                # we consume, so wait a little instead of spinning.
                await asyncio.sleep(0.005)


class IncompleteHello(Exception):
    pass


@dataclass
class ClientHello:
    server_name: str  # lower case, no trailing dot; "" when the client sent none
    alpn: list[str]  # the protocols the client offers, in its order


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The server name and ALPN protocols of a TLS record holding a ClientHello, or None
    when ``data`` is not one.  Raises IncompleteHello when the record is cut."""
    if len(data) < 5:
        raise IncompleteHello
    if data[0] != 0x16 or data[1] != 0x03:  # handshake record, TLS 1.x
        return None
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        raise IncompleteHello
    record = data[5:end]
    if len(record) < 4 or record[0] != 0x01:  # ClientHello
        return None
    hello = ClientHello("", [])
    try:
        pos = 4 + 2 + 32  # handshake header, client version, random
        pos += 1 + record[pos]  # session id
        pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
        pos += 1 + record[pos]  # compression methods
        extensions_end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(extensions_end, len(record)):
            kind = int.from_bytes(record[pos : pos + 2], "big")
            size = int.from_bytes(record[pos + 2 : pos + 4], "big")
            body = record[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if kind == 0 and body[2] == 0:  # server_name: list length, type host_name, name
                length = int.from_bytes(body[3:5], "big")
                hello.server_name = body[5 : 5 + length].decode("ascii", "replace")
                hello.server_name = hello.server_name.lower().rstrip(".")
            elif kind == 16:  # ALPN: list length, then (length, name) entries
                at = 2
                while at < len(body):
                    hello.alpn.append(body[at + 1 : at + 1 + body[at]].decode("ascii", "replace"))
                    at += 1 + body[at]
    except IndexError:
        return None
    return hello
