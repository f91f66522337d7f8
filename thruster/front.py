"""pythrust's listeners: the HTTP port, or with TLS_DOMAIN the HTTPS port for the app and the HTTP
port for ACME challenges and redirects. Shared by app mode and `pythrust serve`."""

from __future__ import annotations

import asyncio
import socket

from proxy.http.request import Dispatcher
from proxy.http.server import HttpLimits, HttpServer
from proxy.log import JsonLog
from thruster.config import ThrusterConfig
from thruster.tls import DomainCertificates, RedirectDispatcher

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
        self.certificates = DomainCertificates(config, log) if config.tls_domains else None

    async def start(self) -> bool:
        """Bind every port (before the app starts); False, logged, when one cannot be bound."""
        config = self.config
        try:
            if self.certificates is None:
                plain = await self.main.listen(
                    None, config.http_port, report_port=config.http_port, h2c=config.h2c_enabled
                )
                addresses = {"http": _address(plain)}
            else:
                redirects = HttpServer(
                    RedirectDispatcher(self.certificates),
                    self.log,
                    self.limits,
                    log_requests=config.log_requests,
                )
                self.servers.append(redirects)
                plain = await redirects.listen(None, config.http_port, report_port=config.http_port)
                secure = await self.main.listen(
                    None, config.https_port, self.certificates.terminator, config.https_port
                )
                addresses = {"http": _address(plain), "https": _address(secure)}
        except OSError as exc:
            self.log.error("Could not start", error=str(exc))
            return False
        if self.certificates is not None:
            self.certificates.start()
        self.log.info("Server started", **addresses, tls_domain=",".join(config.tls_domains))
        return True

    async def adopt(self, sock: socket.socket) -> None:
        """Accept on a listening socket inherited from pythrust (a worker: thruster/workers.py)."""
        await self.main.serve(sock, None, self.config.http_port, h2c=self.config.h2c_enabled)

    def listening_fd(self) -> int:
        """The plain listener's socket, for workers to inherit (no TLS_DOMAIN with workers: config.py)."""
        return self.main.servers[0].sockets[0].fileno()

    async def stop(self) -> None:
        """Let requests in progress finish (within SHUTDOWN_GRACE), then close everything."""
        await asyncio.gather(*(server.shutdown(SHUTDOWN_GRACE) for server in self.servers))
        if self.certificates is not None:
            await self.certificates.close()


def _address(server: object) -> str:
    return f":{server.sockets[0].getsockname()[1]}"
