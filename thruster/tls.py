"""TLS_DOMAIN: certificates from an ACME CA for the listed domains, and the plain port's redirects.

It is the proxy's own TLS code (proxy/autocert.py, proxy/tls.py): the
certificates are ordered in the background when pythrust starts (HTTP-01 on
the HTTP port, TLS-ALPN-01 on the HTTPS port when the CA cannot reach port
80), kept in STORAGE_PATH (in a subfolder per ACME directory, so staging and
production certificates never mix) and renewed before they expire. Until a
domain's first certificate arrives its handshakes fail; the HTTPS port
offers HTTP/2 and HTTP/1.1 by ALPN.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.autocert import AutoCertificates
from proxy.challenges import Http01Tokens, TlsAlpnChallenges
from proxy.http.request import Request
from proxy.http.responses import redirect_response, text_response
from proxy.log import JsonLog
from proxy.routing import strip_port
from proxy.service import TlsOptions
from proxy.tls import ServedCertificates, TlsTerminator
from thruster.config import ThrusterConfig

_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


class DomainCertificates:
    """The HTTPS listener's certificates, one per TLS_DOMAIN entry, and the ACME challenges answered.

    As such, a worker's (thruster/workers.py): pythrust sends it what AcmeCertificates obtains."""

    def __init__(
        self,
        config: ThrusterConfig,
        log: JsonLog,
        tokens: Http01Tokens | None = None,
        alpn_challenges: TlsAlpnChallenges | None = None,
    ) -> None:
        self.domains = tuple(ascii_host(domain) for domain in config.tls_domains)
        self.log = log
        self.tokens = Http01Tokens() if tokens is None else tokens
        self.alpn_challenges = TlsAlpnChallenges() if alpn_challenges is None else alpn_challenges
        self.terminator = TlsTerminator(self.alpn_challenges)

    def install(self, served: ServedCertificates) -> None:
        for domain in self.terminator.install(served):
            self.log.error("Certificate could not be loaded", host=domain)

    async def close(self) -> None:
        """Nothing to stop here: the certificates come from pythrust."""


class AcmeCertificates(DomainCertificates):
    """pythrust's own: ordered from the ACME CA and renewed; `on_served` passes each change on to the
    workers, and the challenges' `on_change` too (thruster/workers.py)."""

    def __init__(self, config: ThrusterConfig, log: JsonLog) -> None:
        self.auto = AutoCertificates(log)
        super().__init__(config, log, self.auto.tokens, self.auto.alpn_challenges)
        self.options = TlsOptions(
            enabled=True,
            acme_directory=config.acme_directory,
            acme_cache_path=config.storage_path,
            acme_eab_kid=config.eab_kid,
            acme_eab_hmac_key=config.eab_hmac_key,
        )
        self.on_served: Callable[[ServedCertificates], None] = lambda served: None
        self.auto.on_change = self._publish

    def start(self) -> None:
        """Serve cached certificates at once; order the missing ones in the background."""
        for domain in self.domains:
            self.auto.ensure(domain, self.options)

    async def close(self) -> None:
        await self.auto.close()

    def _publish(self) -> None:
        files = self.auto.files
        served = ServedCertificates(
            tuple((domain, files[domain]) for domain in self.domains if domain in files)
        )
        self.install(served)
        self.on_served(served)


class RedirectDispatcher:
    """The plain HTTP port with TLS on: ACME HTTP-01 answers, else a 301 to HTTPS for a listed
    domain and 421 Misdirected Request for any other host (as thruster)."""

    def __init__(self, certificates: DomainCertificates) -> None:
        self.tokens = certificates.tokens
        self.domains = frozenset(certificates.domains)

    def route(self, request: Request) -> int | bytes:
        url = request.url
        if url.startswith(_CHALLENGE_PREFIX):
            answer = self.tokens.get(url[len(_CHALLENGE_PREFIX) :].decode("latin-1"))
            return 404 if answer is None else text_response(answer)
        try:
            host = ascii_host(strip_port(request.host.decode("utf-8")))
        except UnicodeError:
            return 421
        if host not in self.domains:
            return 421
        # The port is never kept, as thruster: HTTPS is expected on 443.
        return redirect_response(b"https://%s%s" % (host.encode(), url))


def ascii_host(host: str) -> str:
    """A host name as certificates and the Host header compare it: lower-case, IDNA (punycode)."""
    return host.strip().lower().encode("idna").decode("ascii")
