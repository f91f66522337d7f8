"""Automatic certificates for TLS services without their own: cached, ordered in the background, renewed.

A certificate is ordered when a service is deployed or restored and its cache
has none (or one close to expiry); for on-demand TLS (see ondemand.py), when a
handshake for a new name arrives. Until the first certificate arrives, handshakes for that host
fail; an expiring certificate keeps being served until its replacement is
ready. Failed orders are retried with growing delays, never hammering the CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from proxy.acme import AcmeError, AcmeIssuer, AcmeSettings, CertificateCache, needs_renewal
from proxy.challenges import Http01Tokens, TlsAlpnChallenges
from proxy.log import JsonLog
from proxy.service import TlsOptions
from proxy.tls import CertificateFiles

RETRY_DELAYS = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
RENEWAL_CHECK_INTERVAL = 12 * 3600.0


class AutoCertificates:
    """Per-host certificates from ACME CAs, and the HTTP-01 tokens the proxy answers for them."""

    def __init__(self, log: JsonLog, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.log = log
        self.on_change: Callable[[], None] = lambda: None  # set by the owner: a certificate came or went
        self.retry_delays = retry_delays
        self.tokens = Http01Tokens()
        self.alpn_challenges = TlsAlpnChallenges()
        self.files: dict[str, CertificateFiles] = {}  # what each host is served with
        self.chains: dict[str, bytes] = {}
        self._issuers: dict[AcmeSettings, AcmeIssuer] = {}
        self._orders: dict[str, asyncio.Task[None]] = {}
        self._renewals: asyncio.Task[None] | None = None
        self._wanted: dict[str, TlsOptions] = {}

    def ensure(self, host: str, tls: TlsOptions) -> str:
        """Serve `host` from the cache now if possible; order in the background if needed.

        Returns what happened, for the deploy's progress: "cached", "ordering" or "renewing".
        """
        self._keep_renewed(host, tls)
        if self.serve_cached(host, tls):
            return "renewing" if host in self._orders else "cached"
        self._order(host, self._issuer(tls))
        return "ordering"

    def serve_cached(self, host: str, tls: TlsOptions) -> bool:
        """Serve `host` from the cache if it holds a certificate (and keep it renewed)."""
        issuer = self._issuer(tls)
        cached = issuer.cache.load(host)
        if cached is None:
            return False
        self._keep_renewed(host, tls)
        self.log.debug("Certificate loaded from cache", host=host, directory=str(issuer.cache.dir))
        self._install(host, issuer.cache, cached[0])
        if needs_renewal(cached[0]):
            self._order(host, issuer)
        return True

    async def order_now(self, host: str, tls: TlsOptions) -> bool:
        """Order once and wait (on-demand TLS: a handshake is waiting); False when the CA refused."""
        issuer = self._issuer(tls)
        try:
            chain_pem, _ = await issuer.issue(host)
        except AcmeError as exc:
            self.log.error("Certificate order failed", host=host, error=str(exc))
            return False
        self._install(host, issuer.cache, chain_pem)
        self._keep_renewed(host, tls)
        return True

    def _keep_renewed(self, host: str, tls: TlsOptions) -> None:
        self._wanted[host] = tls
        if self._renewals is None:
            self._renewals = asyncio.get_running_loop().create_task(self._check_renewals())

    def forget(self, host: str) -> None:
        """No service wants this host any more: stop ordering for it (the cache stays)."""
        self._wanted.pop(host, None)
        order = self._orders.pop(host, None)
        if order is not None:
            order.cancel()

    async def close(self) -> None:
        tasks = [*self._orders.values(), *([self._renewals] if self._renewals else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _issuer(self, tls: TlsOptions) -> AcmeIssuer:
        settings = AcmeSettings(
            directory_url=tls.acme_directory,
            cache_root=Path(tls.acme_cache_path),
            eab_kid=tls.acme_eab_kid,
            eab_hmac_key=tls.acme_eab_hmac_key,
        )
        issuer = self._issuers.get(settings)
        if issuer is None:
            issuer = AcmeIssuer(settings, self.tokens, self.log.info, self.alpn_challenges)
            self._issuers[settings] = issuer
        return issuer

    def _install(self, host: str, cache: CertificateCache, chain_pem: bytes) -> None:
        self.files[host] = CertificateFiles.at(str(cache.dir / host))  # the key, then the chain
        self.chains[host] = chain_pem
        self.on_change()

    def _order(self, host: str, issuer: AcmeIssuer) -> None:
        if host not in self._orders:
            task = asyncio.get_running_loop().create_task(self._order_until_issued(host, issuer))
            self._orders[host] = task

    async def _order_until_issued(self, host: str, issuer: AcmeIssuer) -> None:
        attempt = 0
        try:
            while True:
                try:
                    chain_pem, _ = await issuer.issue(host)
                except AcmeError as exc:
                    delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                    attempt += 1
                    self.log.error(
                        "Certificate order failed", host=host, error=str(exc), retry_in=f"{delay:g}s"
                    )
                    await asyncio.sleep(delay)
                    continue
                self._install(host, issuer.cache, chain_pem)
                return
        finally:
            self._orders.pop(host, None)

    async def _check_renewals(self) -> None:
        while True:
            await asyncio.sleep(RENEWAL_CHECK_INTERVAL)
            for host, chain_pem in list(self.chains.items()):
                tls = self._wanted.get(host)
                if tls is not None and needs_renewal(chain_pem):
                    self._order(host, self._issuer(tls))
