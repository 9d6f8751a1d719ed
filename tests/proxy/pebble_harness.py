"""A local ACME server for the proxy's automatic-TLS tests: Pebble plus a stub DNS server.

Pebble (Debian package ``pebble``, installed by tests/lab/install-packages.sh) is Let's
Encrypt's small RFC 8555 test CA.  :class:`Pebble` runs ``/usr/bin/pebble`` with its own
config, HTTPS certificate and ports, all on 127.0.0.1, and points its validation authority
(VA) at :class:`StubDNS`, which resolves every name to 127.0.0.1.  So an HTTP-01 challenge
for ``app.test`` is fetched from ``http://127.0.0.1:<http_port>/.well-known/acme-challenge/…``
and a TLS-ALPN-01 one from ``127.0.0.1:<tls_port>`` — the proxy's ports in a test.  Nothing
leaves loopback.

Pebble's VA looks a name up with two queries, AAAA then A (``resolveIP`` in its va/va.go; a
DNS-01 challenge would ask for TXT, which gets an empty answer here).  It checks no CAA
records.  Each challenge is validated by three concurrent fetches, so a challenge server sees
three requests per challenge.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from proxy_harness import WAIT, free_port

PEBBLE_BINARY = Path("/usr/bin/pebble")

# Pebble's knobs (see its README), set for fast, deterministic tests.  Pebble gets only these
# plus PATH, so nothing inherited (PEBBLE_VA_ALWAYS_VALID, HTTP_PROXY, …) changes what it does.
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random 0-5 s sleep
    "PEBBLE_WFE_NONCEREJECT": "0",  # never reject a good nonce (default: 5% badNonce)
    "PEBBLE_AUTHZREUSE": "0",  # every order needs fresh challenges (default: 50% reuse)
    "PEBBLE_CHAIN_LENGTH": "1",  # leaf + one intermediate (the default, made explicit)
    "PEBBLE_ALTERNATE_ROOTS": "0",  # one root, at /roots/0 (the default, made explicit)
}

# --- a stub DNS server ---------------------------------------------------------------------------

QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 16: "TXT", 28: "AAAA", 257: "CAA"}


class StubDNS:
    """A UDP DNS server on 127.0.0.1 that answers every A query with one address (127.0.0.1)
    and every other query (AAAA, CAA, TXT, …) with NOERROR and no answers.

    ``queries`` records what was asked, as ``(name, type)``, e.g. ``("app.test", "AAAA")``.
    """

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = ipaddress.IPv4Address(address)
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stub-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                packet, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(packet)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def answer(self, packet: bytes) -> bytes | None:
        """The reply to one query packet, or None for a packet not worth answering."""
        if len(packet) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if flags & 0x8000:  # a response, not a query
            return None
        opcode = (flags >> 11) & 0xF
        # QR=1, the query's opcode and RD, RA=1; the rcode goes in the low four bits.
        reply_flags = 0x8000 | (flags & 0x7900) | 0x0080
        if opcode != 0 or qdcount != 1:
            return struct.pack("!HHHHHH", ident, reply_flags | 4, 0, 0, 0, 0)  # NOTIMP
        labels: list[str] = []
        offset = 12
        while True:
            if offset >= len(packet):
                return None
            length = packet[offset]
            offset += 1
            if length == 0:
                break
            if length & 0xC0 or offset + length > len(packet):  # no compression in a question
                return struct.pack("!HHHHHH", ident, reply_flags | 1, 0, 0, 0, 0)  # FORMERR
            labels.append(packet[offset : offset + length].decode("ascii", "replace"))
            offset += length
        if offset + 4 > len(packet):
            return None
        qtype, qclass = struct.unpack("!HH", packet[offset : offset + 4])
        question = packet[12 : offset + 4]
        self.queries.append((".".join(labels).lower(), QTYPE_NAMES.get(qtype, str(qtype))))
        answers = b""
        if qtype == 1 and qclass == 1:
            # Name: a pointer to the question's name at offset 12; IN A, TTL 0, 4 bytes.
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + self.address.packed
        header = struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=WAIT)
        self._sock.close()


# --- Pebble's own HTTPS certificate --------------------------------------------------------------


def write_serving_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for 127.0.0.1 / localhost signed by it, written to ``folder``
    as ca.pem, cert.pem and key.pem; returns their paths in that order."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipyard test pebble HTTPS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


# --- the Pebble process --------------------------------------------------------------------------


class PebbleError(RuntimeError):
    pass


class Pebble:
    """Pebble on 127.0.0.1, validating challenges on ``http_port`` (HTTP-01) and ``tls_port``
    (TLS-ALPN-01), resolving every name to 127.0.0.1 through a :class:`StubDNS`.

    Started by the constructor (``start=False`` to defer); ``stop()`` ends it, and it is a
    context manager.  ``env`` adds to / overrides :data:`PEBBLE_ENV` (e.g.
    ``{"PEBBLE_WFE_NONCEREJECT": "50"}`` to exercise badNonce retries);
    ``validity_seconds`` sets the lifetime of issued certificates (Pebble's default: 5 years).
    """

    def __init__(
        self,
        http_port: int,
        tls_port: int,
        workdir: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        validity_seconds: int | None = None,
        start: bool = True,
    ) -> None:
        self.http_port = http_port
        self.tls_port = tls_port
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pebble-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        self.validity_seconds = validity_seconds
        self.acme_port = 0
        self.management_port = 0
        self.config_path = self.workdir / "pebble-config.json"
        self.log_path = self.workdir / "pebble.log"
        self.ca_bundle, self.cert_path, self.key_path = write_serving_certificate(self.workdir)
        self.dns: StubDNS | None = None
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    # --- addresses -----------------------------------------------------------------------

    @property
    def directory_url(self) -> str:
        """The ACME directory, e.g. https://127.0.0.1:40123/dir (trust ``ca_bundle``)."""
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **PEBBLE_ENV, **self.extra_env}

    def config(self) -> dict[str, object]:
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.cert_path),
            "privateKey": str(self.key_path),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds is not None:
            settings["certificateValidityPeriod"] = self.validity_seconds
        return {"pebble": settings}

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> Pebble:
        if not PEBBLE_BINARY.exists():
            raise PebbleError(
                f"{PEBBLE_BINARY} is missing: install the test lab's packages with "
                "`sudo bash tests/lab/install-packages.sh` (Debian package `pebble`)"
            )
        if self.dns is None:
            self.dns = StubDNS()
        # Free ports are picked before Pebble binds them; retry if another process won the race.
        for attempt in range(3):
            self.acme_port, self.management_port = free_port(), free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            if self._launch(last=attempt == 2):
                return self
        raise AssertionError("unreachable")

    def _launch(self, last: bool) -> bool:
        assert self.dns is not None
        args = [
            str(PEBBLE_BINARY),
            "-config",
            str(self.config_path),
            "-dnsserver",
            f"127.0.0.1:{self.dns.port}",
            "-strict=false",  # the README asks test suites to pin this
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
            )
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        deadline = time.monotonic() + WAIT
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                if not last and "address already in use" in self.log_tail():
                    return False
                raise PebbleError(f"pebble exited with status {code}:\n{self.log_tail()}")
            try:
                for url in (self.directory_url, f"{self.management_url}/roots/0"):
                    with urllib.request.urlopen(url, timeout=2, context=context) as response:
                        response.read()
                return True
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    message = (
                        f"pebble did not answer on {self.directory_url} within {WAIT:.0f}s:\n"
                        f"{self.log_tail()}"
                    )
                    self.stop()
                    raise PebbleError(message) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Pebble:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- the issuing CA ------------------------------------------------------------------

    def management_get(self, path: str) -> str:
        """GET a management-API path (e.g. /roots/0, /cert-status-by-serial/<hex>)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"{self.management_url}{path}"
        with urllib.request.urlopen(url, timeout=WAIT, context=context) as response:
            return str(response.read().decode("ascii"))

    def issuer_roots_pem(self) -> str:
        """The root certificate Pebble issues under (new on every start): trust this, and
        only this, to verify a certificate the proxy obtained and serves."""
        return self.management_get("/roots/0")

    def issuer_intermediates_pem(self) -> str:
        """The intermediate that signs leaves (sent by Pebble as part of each issued chain)."""
        return self.management_get("/intermediates/0")

    def issuer_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts only Pebble's issuing root, for
        ``proxy_harness.request(..., tls=pebble.issuer_context(), server_hostname=...)``."""
        return ssl.create_default_context(cadata=self.issuer_roots_pem())
