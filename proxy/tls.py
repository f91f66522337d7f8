"""TLS termination: the certificate for each connection is chosen by SNI.

Certificates come from files the operator gave (`--tls-certificate-path`) or
from the ACME cache. The manager builds an immutable CertificateMap on every
change and swaps it in; the SNI callback only reads the current one.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable

from proxy.tlsalpn import TlsAlpnChallenges


def new_server_context() -> ssl.SSLContext:
    """A server context with modern defaults (TLS 1.2+, no compression, server cipher order, ALPN h2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def load_certificate(certificate_path: str, private_key_path: str) -> ssl.SSLContext:
    """A context serving this certificate; ValueError naming the problem when the files do not fit."""
    for path in (certificate_path, private_key_path):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"unable to load certificate: {path}: {exc.strerror.lower()}") from None
    context = new_server_context()
    try:
        context.load_cert_chain(certificate_path, private_key_path)
    except ssl.SSLError as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc)
        reason = "the private key does not match the certificate" if mismatch else exc
        raise ValueError(f"unable to load certificate: {reason}") from None
    return context


class CertificateMap:
    """Which context serves which server name: exact names, then one-label wildcards."""

    def __init__(
        self,
        exact: dict[str, ssl.SSLContext] | None = None,
        default_name: str | None = None,
    ) -> None:
        self.exact = exact or {}
        self.default_name = default_name

    @classmethod
    def build(
        cls,
        entries: Iterable[tuple[str, ssl.SSLContext]],
        on_demand: Iterable[tuple[str, ssl.SSLContext]] = (),
    ) -> CertificateMap:
        """From (host pattern, context) pairs in priority order; the first plain name is the default.

        On-demand names come after the listed ones and never become the default (spec 11.1).
        """
        exact: dict[str, ssl.SSLContext] = {}
        default_name = None
        for host, context in entries:
            exact.setdefault(host, context)
            if default_name is None and not host.startswith("*."):
                default_name = host
        for host, context in on_demand:
            exact.setdefault(host, context)
        return cls(exact, default_name)

    def lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        if not server_name:
            server_name = self.default_name  # a client that sent no SNI (e.g. by IP address)
            if server_name is None:
                return None
        name = server_name.lower()
        context = self.exact.get(name)
        if context is None:
            dot = name.find(".")
            if dot > 0:
                context = self.exact.get("*" + name[dot:])
        return context


class TlsTerminator:
    """The listener's context: its SNI callback switches each connection to the right certificate.

    An unknown name fails the handshake: a client never sees another service's certificate.
    """

    def __init__(self, alpn_challenges: TlsAlpnChallenges | None = None) -> None:
        self.alpn_challenges = alpn_challenges
        self.certificates = CertificateMap()
        self.context = new_server_context()
        self.context.sni_callback = self._select
        # Set by the owner while an on-demand TLS service exists: readies a certificate for a new name.
        self.on_demand: Callable[[str], Awaitable[None] | None] | None = None

    def prepare(self, server_name: str) -> Awaitable[None] | None:
        """What the handshake for `server_name` must wait for (an on-demand certificate), if anything."""
        if self.on_demand is None or self.certificates.lookup(server_name) is not None:
            return None
        return self.on_demand(server_name)

    def challenge_context(self, server_name: str) -> ssl.SSLContext | None:
        """The TLS-ALPN-01 answer for `server_name` while one of its orders is being validated."""
        return self.alpn_challenges.get(server_name) if self.alpn_challenges is not None else None

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        context = self.certificates.lookup(server_name)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None
