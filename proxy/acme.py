"""Automatic TLS: certificates from an ACME CA (Let's Encrypt unless told otherwise).

Behaves like Go's ``autocert`` as kamal-proxy uses it: a certificate is obtained on the
first handshake for a name (the handshake waits for it), kept in a cache directory in
autocert's layout so an existing ``kamal-proxy-config`` volume keeps working, and renewed
in the background 30 days before it expires.  The account agrees to the CA's terms and has
no contact e-mail.  Validation is HTTP-01 (``/.well-known/acme-challenge/`` on the HTTP
port, see exchange.py) and, when the CA cannot reach that, TLS-ALPN-01 (the HTTPS
listener, tls.py); the ``Responders`` are what both listeners read.

The ACME protocol itself is certbot's ``acme`` library.  It is synchronous (requests), so
each issuance runs in a worker thread.  It and ``cryptography`` are imported only when a
certificate is needed, which keeps them out of the memory of a proxy that never uses
automatic TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from .logs import JsonLogger
    from .service import Service

LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGE_PATH = "/.well-known/acme-challenge/"
HTTP_01, TLS_ALPN_01 = "http-01", "tls-alpn-01"
ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737's ALPN protocol
ACCOUNT_KEY_FILE = "acme_account+key"  # autocert's name
RENEW_BEFORE = datetime.timedelta(days=30)  # autocert's default
ISSUE_TIMEOUT = 90.0  # seconds: the acme library's own default deadline
RETRY_AFTER_FAILURE = 60.0  # seconds before a failed name is tried again
ON_DEMAND_TIMEOUT = 2.0  # seconds, as kamal-proxy's on-demand check


class AcmeError(Exception):
    """A certificate could not be obtained; the message says why."""


@dataclass
class Certificate:
    context: ssl.SSLContext
    not_after: datetime.datetime
    path: Path  # the cache file
    directory_url: str  # the CA it came from, and renews from

    def due_for_renewal(self) -> bool:
        return self.not_after - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE


def cache_dir_for(acme_cache_path: str, acme_directory: str, data_dir: str) -> Path:
    """autocert's layout: ``<cache path>/<sha256 hex of the directory URL as configured>``
    (the empty string for Let's Encrypt production, as kamal-proxy configures it)."""
    base = Path(acme_cache_path or os.path.join(data_dir, "certs"))
    return base / hashlib.sha256(acme_directory.encode()).hexdigest()


def load_cached(path: Path, directory_url: str) -> Certificate | None:
    """A certificate from a cache file (PEM private key and chain in one file), or None if
    there is none or it has expired.  A damaged file is treated as missing."""
    from cryptography import x509

    from .tls import CertificateError, load_certificate

    try:
        pem = path.read_bytes()
        leaf = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE-----") :])
        context = load_certificate(str(path))
    except (OSError, ValueError, CertificateError):
        return None
    not_after = leaf.not_valid_after_utc
    if not_after <= datetime.datetime.now(datetime.UTC):
        return None
    return Certificate(context, not_after, path, directory_url)


class CertificateManager:
    """The proxy's automatic certificates, by host name, shared by every service."""

    def __init__(self, data_dir: str, logger: JsonLogger) -> None:
        self.data_dir = data_dir
        self.logger = logger
        # What answers the CA while an order is open (the listeners read it).
        self.responders = Responders()
        self._ready: dict[str, Certificate] = {}
        self._pending: dict[str, asyncio.Future[Certificate]] = {}
        self._failed: dict[str, tuple[float, str]] = {}

    def ready_context(self, name: str) -> ssl.SSLContext | None:
        """The context for ``name`` if its certificate is in memory (the handshake's path).
        Starts a background renewal when it is due."""
        cert = self._ready.get(name)
        if cert is None:
            return None
        if cert.due_for_renewal() and name not in self._pending:
            self._track(name, self._renew(name, cert))
        return cert.context

    def ready_path(self, name: str) -> Path | None:
        """The cache file of the certificate in memory for ``name`` (HTTP/3 loads it)."""
        cert = self._ready.get(name)
        return cert.path if cert is not None else None

    async def ensure(self, name: str, service: Service) -> None:
        """Make ``ready_context(name)`` answer: from the cache directory, or from the CA
        (after the on-demand check, for an on-demand service).  Raises AcmeError."""
        if name in self._ready:
            return
        pending = self._pending.get(name) or self._track(name, self._obtain(name, service))
        self._ready[name] = await asyncio.shield(pending)

    def _track(
        self, name: str, work: Coroutine[Any, Any, Certificate]
    ) -> asyncio.Future[Certificate]:
        """The one obtain-or-renew in flight for ``name``, shared by every handshake."""
        pending = self._pending[name] = asyncio.ensure_future(work)
        pending.add_done_callback(lambda _f: self._pending.pop(name, None))
        return pending

    async def _obtain(self, name: str, service: Service) -> Certificate:
        options = service.options
        cache_dir = cache_dir_for(options.acme_cache_path, options.acme_directory, self.data_dir)
        directory_url = options.acme_directory or LETS_ENCRYPT_DIRECTORY
        # autocert keeps an RSA certificate, for clients without ECDSA, as "<name>+rsa".
        cached = load_cached(cache_dir / name, directory_url) or load_cached(
            cache_dir / f"{name}+rsa", directory_url
        )
        if cached is not None and not cached.due_for_renewal():
            return cached
        failed = self._failed.get(name)
        if failed is not None and time.monotonic() < failed[0]:
            raise AcmeError(failed[1])
        if options.tls_on_demand_url and cached is None:
            await self._check_on_demand(name, service)
        try:
            return await self._issue(name, cache_dir / name, directory_url)
        except AcmeError as exc:
            if cached is not None:  # still valid: keep serving it, renew later
                self.logger.warn("Certificate renewal failed", host=name, error=str(exc))
                return cached
            self._failed[name] = (time.monotonic() + RETRY_AFTER_FAILURE, str(exc))
            raise

    async def _renew(self, name: str, cert: Certificate) -> Certificate:
        try:
            renewed = await self._issue(name, cert.path.parent / name, cert.directory_url)
        except AcmeError as exc:
            self.logger.warn("Certificate renewal failed", host=name, error=str(exc))
            return cert
        self._ready[name] = renewed
        return renewed

    async def _issue(self, name: str, path: Path, directory_url: str) -> Certificate:
        self.logger.info("Requesting certificate", host=name, directory=directory_url)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            challenge = await asyncio.wait_for(
                loop.run_in_executor(
                    None, issue_certificate, directory_url, path, name, self.responders
                ),
                2 * ISSUE_TIMEOUT + 5,
            )
        except TimeoutError:
            raise AcmeError(f"no certificate for {name} within {2 * ISSUE_TIMEOUT:.0f}s") from None
        cert = load_cached(path, directory_url)
        if cert is None:
            raise AcmeError(f"the certificate written for {name} cannot be loaded")
        self.logger.info(
            "Certificate obtained",
            host=name,
            challenge=challenge,
            expires=cert.not_after.isoformat(),
            seconds=round(time.monotonic() - started, 3),
        )
        return cert

    async def _check_on_demand(self, name: str, service: Service) -> None:
        """kamal-proxy's on-demand check: only a 200 from ``<url>?host=<name>`` allows it."""
        url = on_demand_url(service.options.tls_on_demand_url, name)
        if url.startswith("/"):
            status, body = await _ask_service(service, name, url)
        else:
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, _fetch_no_redirects, url)
        if status != 200:
            self.logger.warn(
                "TLS on-demand check denied host",
                host=name,
                status=status,
                body=body[:256].decode("utf-8", "replace"),
            )
            raise AcmeError(f"the TLS on-demand check denied {name} (status {status})")


def on_demand_url(url: str, name: str) -> str:
    """``url`` with ``host=<name>`` added to its query, keys sorted (Go's Query.Encode)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = sorted([*query, ("host", name)], key=lambda kv: kv[0])
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def _ask_service(service: Service, name: str, path_and_query: str) -> tuple[int, bytes]:
    """A path on-demand URL goes to the service itself, over plain HTTP, with Host <name>.
    A paused or stopped service denies (as a request to it would wait or get 503)."""
    from .controllers import RUNNING

    if service.pause.state != RUNNING:
        return 503, b"service is paused or stopped"
    target = service.active.pick(True) if service.active is not None else None
    if target is None:
        return 503, b"no healthy target"
    host, _, port = target.address.rpartition(":")
    request = (
        f"GET {path_and_query} HTTP/1.1\r\nHost: {name}\r\nX-Forwarded-Proto: http\r\n"
        "User-Agent: shipyard-proxy\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    try:
        async with asyncio.timeout(ON_DEMAND_TIMEOUT):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            try:
                writer.write(request)
                response = b""
                while len(response) < 64 * 1024:  # the status and the start of the body
                    chunk = await reader.read(64 * 1024)
                    if not chunk:
                        break
                    response += chunk
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return 502, str(exc).encode()
    head, _, body = response.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 502, response[:256]
    return status, body


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch_no_redirects(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(url, timeout=ON_DEMAND_TIMEOUT) as response:
            return int(response.status), response.read(256)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(256)
    except (OSError, ValueError) as exc:
        return 0, str(exc).encode()


# --------------------------------------------------------------------------- the protocol


@dataclass
class Responders:
    """What answers the CA's validation while an order is open, by challenge type."""

    http_01: dict[str, str] = field(default_factory=dict)  # token -> key authorization
    tls_alpn_01: dict[str, ssl.SSLContext] = field(default_factory=dict)  # name -> context


def issue_certificate(directory_url: str, path: Path, name: str, responders: Responders) -> str:
    """Get a certificate for ``name`` from the ACME CA (blocking; a worker thread) and write
    it to ``path``, next to the account key.  HTTP-01 first (``responders.http_01`` is
    served on the HTTP port); if the CA cannot validate that, a new order with TLS-ALPN-01
    (``responders.tls_alpn_01``, answered by the HTTPS listener), as autocert also offers.
    Returns the challenge type that worked.  Every failure is an AcmeError."""
    from acme import client, crypto_util, errors, messages
    from cryptography.hazmat.primitives.asymmetric import ec
    from josepy.jwa import ES256
    from josepy.jwk import JWKEC

    problems: list[str] = []
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        jwk = JWKEC(key=_load_or_create_key(path.parent / ACCOUNT_KEY_FILE))
        net = client.ClientNetwork(jwk, alg=ES256, user_agent="shipyard-proxy")
        acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
        registration = messages.NewRegistration.from_data(terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exists:  # the key already has an account
            acme.query_registration(
                messages.RegistrationResource(uri=exists.location, body=registration)
            )
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_pem(cert_key), [name])
        for kind in (HTTP_01, TLS_ALPN_01):
            try:
                order = _validate_and_finalize(acme, jwk, csr, name, kind, responders)
            except errors.ValidationError as exc:
                problems += [
                    f"{kind}: {challenge.error}"
                    for authz in exc.failed_authzrs
                    for challenge in authz.body.challenges
                    if challenge.error is not None
                ] or [f"{kind}: {exc}"]
                continue
            _write_private(path, _pem(cert_key, traditional=True) + order.fullchain_pem.encode())
            return kind
    except AcmeError:
        raise
    except Exception as exc:  # the CA's problem documents, network and file-system errors
        raise AcmeError(f"{name}: {type(exc).__name__}: {exc}") from None
    raise AcmeError(f"{name}: validation failed: {'; '.join(problems)}")


def _validate_and_finalize(
    acme: Any, jwk: Any, csr: bytes, name: str, kind: str, responders: Responders
) -> Any:
    """One order for ``name``, its challenges answered the ``kind`` way; the finalized
    order.  Raises the acme library's ValidationError when the CA could not validate."""
    from acme import challenges, messages
    from josepy.b64 import b64encode
    from josepy.jwk import JWK

    order = acme.new_order(csr)
    thumbprint = b64encode(JWK.thumbprint(jwk)).decode()
    answered: list[str] = []
    try:
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            chosen = [c for c in authorization.body.challenges if _challenge_type(c) == kind]
            if not chosen:
                raise AcmeError(f"{name}: the CA offers no {kind} challenge")
            chall = chosen[0].chall
            token = chall.encode("token") if isinstance(chall, challenges.HTTP01) else ""
            token = token or str(getattr(chall, "jobj", {}).get("token", ""))
            key_authorization = f"{token}.{thumbprint}"
            if kind == HTTP_01:
                responders.http_01[token] = key_authorization
            else:
                responders.tls_alpn_01[name] = _tls_alpn_01_context(name, key_authorization)
            answered.append(token)
            acme.answer_challenge(chosen[0], _ready_response_class()())
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ISSUE_TIMEOUT)
        return acme.poll_and_finalize(order, deadline)
    finally:
        for token in answered:
            responders.http_01.pop(token, None)
        responders.tls_alpn_01.pop(name, None)


@functools.cache
def _ready_response_class() -> Any:
    """Made on first use: the acme library is imported only when a certificate is needed."""
    from acme import challenges

    class ReadyResponse(challenges.ChallengeResponse):
        """RFC 8555's "ready" POST to a challenge: the payload {}.  The acme library sends
        a falsy object as an empty payload (a POST-as-GET), so this one is truthy."""

        def __bool__(self) -> bool:
            return True

    return ReadyResponse


def _challenge_type(challenge_body: Any) -> str:
    from acme import challenges

    chall = challenge_body.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):  # tls-alpn-01 in acme >= 4
        return str(chall.jobj.get("type", ""))
    return str(chall.typ)


def self_signed(
    name: str, extensions: list[tuple[Any, bool]] | None = None
) -> tuple[Any, ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed P-256 certificate for ``name``, valid for a day, with
    ``extensions`` as (extension, critical) pairs: for TLS-ALPN-01, and for HTTP/3's
    placeholder.  Returns the certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions or []:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()), key


def _tls_alpn_01_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """RFC 8737: a self-signed certificate for ``name`` carrying the SHA-256 of the key
    authorization in the critical acmeIdentifier extension, offered with ALPN acme-tls/1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    digest = hashlib.sha256(key_authorization.encode()).digest()
    cert, key = self_signed(
        name,
        [
            (x509.SubjectAlternativeName([x509.DNSName(name)]), False),
            # id-pe-acmeIdentifier; the value is a DER OCTET STRING of the 32-byte digest.
            (
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"), b"\x04\x20" + digest
                ),
                True,
            ),
        ],
    )
    from .tls import load_certificate

    # ssl loads certificates from files only: a private temp file, gone once loaded.
    with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
        pem.write(_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
        pem.flush()
        context = load_certificate(pem.name)
    context.set_alpn_protocols([ACME_TLS_ALPN])
    return context


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(path, _pem(key, traditional=True))
        return key
    except ValueError as exc:
        raise AcmeError(f"{path}: not a usable account key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError(f"{path}: the account key is not an ECDSA key")
    return key


def _pem(key: ec.EllipticCurvePrivateKey, traditional: bool = False) -> bytes:
    """PKCS#8 for the CSR; "EC PRIVATE KEY" (what autocert writes) for the cache."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600, as autocert's DirCache does."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
