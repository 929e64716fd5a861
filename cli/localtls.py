"""The local end of a kubernetes tunnel: TLS with a throwaway certificate, and a per-run token.

kubectl sends a bearer token only over TLS (checked with kubectl 1.32: over ``http://`` it
sends none), and without one it prompts for a user name. So for a kubernetes service the CLI's
loopback listener serves TLS with a certificate made for this run (an EC P-256 key that never
touches the disk: the files it is loaded from are deleted at once) and asks each connection's
first request for ``Authorization: Bearer <the run's local token>``, compared in constant time:
another user of the same machine can reach 127.0.0.1 too, but not the token in our 0600 files.
A connection that fails the check gets a 401 ``Status`` and is closed before it becomes a
channel: the broker never hears of it (``tunnel.GatedChannel``). The token is not a cluster
credential (the broker adds its own to each request, and drops this one).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from access.shared.httphead import HeadError, parse_request_head

__all__ = ["LocalTls", "local_tls", "unauthorized"]


@dataclass(frozen=True)
class LocalTls:
    """The listener's TLS context, its certificate (PEM, for the kubeconfig) and the run's token."""

    context: ssl.SSLContext
    cert_pem: str
    token: str = field(repr=False)

    def admits(self, head: bytes) -> bool:
        """Whether a request head carries this run's token (constant-time)."""
        try:
            headers = parse_request_head(head).headers
        except HeadError:
            return False
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8", "replace"), self.token.encode("ascii")
        )


def local_tls(directory: Path | None = None) -> LocalTls:
    """A new certificate for 127.0.0.1 (valid for a day) and token; ``directory`` holds the key
    only for as long as ``ssl`` takes to load it (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "access local tunnel")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # ssl loads keys from files only: one of ours (0600, pid-named so a killed run's is swept), gone at once.
    fd, name_ = tempfile.mkstemp(prefix=f"access-tls-{os.getpid()}-", dir=directory)
    path = Path(name_)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem + cert_pem.encode("ascii"))
        context.load_cert_chain(path)
    finally:
        path.unlink(missing_ok=True)
    return LocalTls(context, cert_pem, secrets.token_urlsafe(32))


def unauthorized() -> bytes:
    """The answer to a local connection without the token: a 401 Status, then close."""
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "this tunnel is another access run's: use the kubeconfig of `access kubeconfig`",
            "reason": "Unauthorized",
            "code": 401,
        }
    ).encode()
    head = (
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
