"""TLS-ALPN-01 (RFC 8737): answering an ACME CA's validation on the HTTPS port itself.

The CA connects with SNI set to the host and ALPN `acme-tls/1` only, and expects
a self-signed certificate for that host carrying the SHA-256 of the key
authorization in a critical acmeIdentifier extension. The HTTPS listener sees
the offered protocols in the ClientHello and hands such a connection the
challenge's context instead of the normal one; the connection closes after the
handshake.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from proxy.http.tlslistener import ACME_TLS_ALPN

_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def challenge_context(host: str, key_authorization: bytes) -> ssl.SSLContext:
    """A TLS context serving the RFC 8737 validation certificate for `host`, with ALPN acme-tls/1 only."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    digest = hashlib.sha256(key_authorization).digest()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        # The extension's value is a DER OCTET STRING (tag 4, length 32) holding the digest.
        .add_extension(x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN])
    # The ssl module loads keys from files only: a private temporary file, removed at once.
    fd, path = tempfile.mkstemp(prefix="pyproxy-tls-alpn-")
    try:
        os.write(fd, pem)
        os.close(fd)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context
