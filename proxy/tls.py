"""TLS termination with custom certificates, chosen per connection by SNI.

Automatic certificates (ACME / Let's Encrypt) cannot work without internet access, so a
TLS service without a certificate is accepted (its HTTP→HTTPS redirects still work) but a
handshake for it fails with a logged explanation.  See proxy/README.md.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .logs import JsonLogger
    from .router import Router


class CertificateError(Exception):
    pass


def load_certificate(cert_path: str, key_path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError, ValueError):
        raise CertificateError("unable to load certificate") from None
    return context


def server_context(router: Router, logger: JsonLogger) -> ssl.SSLContext:
    """The listener's context: it holds no certificate itself, SNI picks the service's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])

    def select(sslobj: ssl.SSLObject, server_name: str | None, _base: ssl.SSLContext) -> int | None:
        name = server_name or ""
        if not name:
            name = router.default_tls_host
            if not name:
                logger.info("TLS handshake error", error="no server name provided")
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            logger.warn("No server name; using default TLS hostname", host=name)
        service = router.root_service_for_host(name)
        if service is None or not service.tls_enabled:
            logger.info("TLS handshake error", error="unknown server name", host=name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if service.ssl_context is None:
            logger.error(
                "Automatic TLS is not supported; deploy with --tls-certificate-path and "
                "--tls-private-key-path",
                host=name,
                service=service.name,
            )
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        sslobj.context = service.ssl_context
        return None

    context.sni_callback = select
    return context
