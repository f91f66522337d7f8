"""TLS termination: the certificate for each connection is chosen by SNI.

Certificates come from files the operator gave (`--tls-certificate-path`) or
from the ACME cache. The control plane names them as values (`CertificateFiles`,
`ServedCertificates`: files, not loaded contexts, so they can be sent to worker
processes); each process's `TlsTerminator` loads each file once and swaps in an
immutable CertificateMap; the SNI callback only reads the current one.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from proxy.challenges import TlsAlpnChallenges


def new_server_context() -> ssl.SSLContext:
    """A server context with modern defaults (TLS 1.2+, no compression, server cipher order, ALPN h2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate chain and its key on disk (`keyfile` None: the key is in `certfile`, as in the ACME
    cache). `version` is the file's modification time when it was installed: a renewal rewrites the
    file in place, and a new version makes every process load it again."""

    certfile: str
    keyfile: str | None = None
    version: int = 0

    @classmethod
    def at(cls, certfile: str, keyfile: str | None = None) -> CertificateFiles:
        return cls(certfile, keyfile, os.stat(certfile).st_mtime_ns)

    def load(self) -> ssl.SSLContext:
        context = new_server_context()
        context.load_cert_chain(self.certfile, self.keyfile)
        return context


@dataclass(frozen=True)
class ServedCertificates:
    """What the HTTPS listeners serve: (host pattern, files) in priority order, then the on-demand names'
    certificates (never the default), and whether a handshake for a name without one asks the control
    plane for one (an on-demand TLS service exists)."""

    listed: tuple[tuple[str, CertificateFiles], ...] = ()
    on_demand: tuple[tuple[str, CertificateFiles], ...] = ()
    ask_unknown: bool = False


def load_certificate(certificate_path: str, private_key_path: str) -> CertificateFiles:
    """The operator's certificate files, checked now; ValueError naming the problem when they do not fit."""
    for path in (certificate_path, private_key_path):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"unable to load certificate: {path}: {exc.strerror.lower()}") from None
    files = CertificateFiles.at(certificate_path, private_key_path)
    try:
        files.load()
    except ssl.SSLError as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc)
        reason = "the private key does not match the certificate" if mismatch else exc
        raise ValueError(f"unable to load certificate: {reason}") from None
    return files


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

    def __init__(
        self,
        alpn_challenges: TlsAlpnChallenges | None = None,
        on_demand: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> None:
        """`on_demand` readies a certificate for a new name (asked only while `ServedCertificates`
        says an on-demand TLS service exists)."""
        self.alpn_challenges = alpn_challenges
        self.certificates = CertificateMap()
        self.context = new_server_context()
        self.context.sni_callback = self._select
        self._on_demand = on_demand
        self._ask_unknown = False
        self._loaded: dict[CertificateFiles, ssl.SSLContext] = {}

    def install(self, served: ServedCertificates) -> list[str]:
        """Serve these certificates from now on; each file is loaded once, and dropped when unused.
        Returns the hosts whose file no longer loads (left without a certificate), for the log."""
        loaded, self._loaded = self._loaded, {}
        failed: list[str] = []

        def contexts(entries: Iterable[tuple[str, CertificateFiles]]) -> Iterable[tuple[str, ssl.SSLContext]]:
            for host, files in entries:
                context = self._loaded.get(files) or loaded.get(files)
                if context is None:
                    try:
                        context = files.load()
                    except (OSError, ssl.SSLError):
                        failed.append(host)
                        continue
                self._loaded[files] = context
                yield host, context

        self.certificates = CertificateMap.build(contexts(served.listed), contexts(served.on_demand))
        self._ask_unknown = served.ask_unknown
        return failed

    def prepare(self, server_name: str) -> Awaitable[None] | None:
        """What the handshake for `server_name` must wait for (an on-demand certificate), if anything."""
        if not self._ask_unknown or self._on_demand is None:
            return None
        if self.certificates.lookup(server_name) is not None:
            return None
        return self._on_demand(server_name)

    def challenge_context(self, server_name: str) -> ssl.SSLContext | None:
        """The TLS-ALPN-01 answer for `server_name` while one of its orders is being validated."""
        return self.alpn_challenges.get(server_name) if self.alpn_challenges is not None else None

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        context = self.certificates.lookup(server_name)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None
