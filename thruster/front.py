"""pythrust's listeners: the HTTP port, or with TLS_DOMAIN the HTTPS port for the app and the HTTP
port for ACME challenges and redirects. Shared by app mode and `pythrust serve`, by pythrust (which binds
them and orders the certificates) and by its workers (which inherit them and are sent the certificates)."""

from __future__ import annotations

import asyncio
import socket

from proxy.http.request import Dispatcher
from proxy.http.server import HttpLimits, HttpServer
from proxy.log import JsonLog
from thruster.config import ThrusterConfig
from thruster.tls import AcmeCertificates, DomainCertificates, RedirectDispatcher
from thruster.workers import ExtraWorkers

SHUTDOWN_GRACE = 5.0


class FrontServers:
    def __init__(
        self,
        dispatcher: Dispatcher,
        config: ThrusterConfig,
        log: JsonLog,
        error_pages: dict[int, bytes] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.limits = HttpLimits(
            header_timeout=float(config.http_read_timeout),
            idle_timeout=float(config.http_idle_timeout),
            write_timeout=float(config.http_write_timeout),
            max_body_bytes=max(config.max_request_body, 0),
        )
        self.main = HttpServer(
            dispatcher,
            log,
            self.limits,
            log_requests=config.log_requests,
            error_pages=error_pages,
            replay_answers=True,
        )
        self.servers = [self.main]
        self.certificates: DomainCertificates | None = None

    async def start(self, workers: ExtraWorkers) -> bool:
        """Bind every port (before the app starts) and order the certificates, which `workers` are sent;
        False, logged, when a port cannot be bound."""
        config = self.config
        try:
            if not config.tls_domains:
                plain = await self.main.listen(
                    None, config.http_port, report_port=config.http_port, h2c=config.h2c_enabled
                )
                addresses = {"http": _address(plain)}
            else:
                certificates = AcmeCertificates(config, self.log)
                plain = await self._redirects(certificates).listen(
                    None, config.http_port, report_port=config.http_port
                )
                secure = await self.main.listen(
                    None, config.https_port, certificates.terminator, config.https_port
                )
                addresses = {"http": _address(plain), "https": _address(secure)}
        except OSError as exc:
            self.log.error("Could not start", error=str(exc))
            return False
        if config.tls_domains:
            self.certificates = certificates
            workers.mirror(certificates)
            certificates.start()
        self.log.info("Server started", **addresses, tls_domain=",".join(config.tls_domains))
        return True

    async def adopt(self, sockets: list[socket.socket], certificates: DomainCertificates | None) -> None:
        """Accept on the listening sockets inherited from pythrust (a worker: thruster/workers.py), with
        TLS_DOMAIN serving `certificates`, which pythrust fills."""
        if certificates is None:
            await self.main.serve(sockets[0], None, self.config.http_port, h2c=self.config.h2c_enabled)
            return
        self.certificates = certificates
        await self._redirects(certificates).serve(sockets[0], None, self.config.http_port)
        await self.main.serve(sockets[1], certificates.terminator, self.config.https_port)

    def listening_fds(self) -> list[int]:
        """The listening sockets, for workers to inherit: the plain one, then any HTTPS one."""
        servers = self.servers[1:] + self.servers[:1]  # with TLS_DOMAIN the main server is the HTTPS one
        return [server.servers[0].sockets[0].fileno() for server in servers]

    def _redirects(self, certificates: DomainCertificates) -> HttpServer:
        """The plain port's server with TLS_DOMAIN: ACME HTTP-01 answers and redirects."""
        redirects = HttpServer(
            RedirectDispatcher(certificates), self.log, self.limits, log_requests=self.config.log_requests
        )
        self.servers.append(redirects)
        return redirects

    async def stop(self) -> None:
        """Let requests in progress finish (within SHUTDOWN_GRACE), then close everything."""
        await asyncio.gather(*(server.shutdown(SHUTDOWN_GRACE) for server in self.servers))
        if self.certificates is not None:
            await self.certificates.close()


def _address(server: object) -> str:
    return f":{server.sockets[0].getsockname()[1]}"
