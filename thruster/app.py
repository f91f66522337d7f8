"""`pythrust CMD...`: bind, start the app with PORT, proxy to it, and exit when it does.

The HTTP engine is the proxy's own (proxy/http): the same parsing, limits,
keep-alive pool and error handling, with one target, 127.0.0.1:TARGET_PORT.
Listeners are bound before the app starts, so a port conflict stops pythrust
before the app runs; requests that arrive while the app is still starting get
the 502 page (BAD_GATEWAY_PAGE, a good place for a "starting up" page).
"""

from __future__ import annotations

import asyncio
import signal

from proxy.http.request import Request
from proxy.http.server import HttpLimits, HttpServer
from proxy.http.upstream import UpstreamPool
from proxy.log import JsonLog
from thruster.child import RELAYED_SIGNALS, ChildProcess
from thruster.config import ThrusterConfig

SHUTDOWN_GRACE = 5.0


class AppDispatcher:
    """Every request goes to the one app."""

    def __init__(self, pool: UpstreamPool, config: ThrusterConfig) -> None:
        self.pool = pool
        self.forward_headers = config.forward_headers
        # thruster's write timeout covers the wait for the app's response too.
        self.target_timeout = float(config.http_write_timeout)

    def route(self, request: Request) -> int:
        request.pool = self.pool
        request.path = request.url
        request.forward_headers = self.forward_headers
        request.target_timeout = self.target_timeout
        return 0


def read_page(path: str, log: JsonLog) -> bytes | None:
    """The 502 page, read once at start; missing is normal (thruster's default path)."""
    try:
        with open(path, "rb") as page:
            return page.read()
    except OSError as exc:
        log.debug("No bad gateway page", path=path, error=exc.strerror)
        return None


async def serve(argv: list[str], config: ThrusterConfig) -> int:
    """Run the app behind the proxy engine until it exits; returns pythrust's exit status."""
    log = JsonLog(debug=config.debug)
    if config.tls_domains:
        # Serving plain HTTP to users who asked for HTTPS would be worse than not starting.
        log.error("TLS_DOMAIN is not supported by this version of pythrust", tls_domain=config.tls_domains)
        return 1
    loop = asyncio.get_running_loop()
    pool = UpstreamPool("127.0.0.1", config.target_port)
    pool.on_error = lambda address, exc: log.info("Unable to proxy request", target=address, error=str(exc))
    page = read_page(config.bad_gateway_page, log)
    http = HttpServer(
        AppDispatcher(pool, config),
        log,
        HttpLimits(
            header_timeout=float(config.http_read_timeout),
            idle_timeout=float(config.http_idle_timeout),
            max_body_bytes=max(config.max_request_body, 0),
        ),
        log_requests=config.log_requests,
        error_pages={502: page} if page is not None else None,
    )
    try:
        server = await http.listen(
            None, config.http_port, report_port=config.http_port, h2c=config.h2c_enabled
        )
    except OSError as exc:
        log.error("Could not start", error=str(exc))
        return 1
    log.info("Server started", http=f":{server.sockets[0].getsockname()[1]}")
    # Handlers first: a signal that comes while the app is being started is held for it, not lost
    # (nor does it kill pythrust and leave the app running alone).
    relay = SignalRelay(log)
    for signum in RELAYED_SIGNALS:
        loop.add_signal_handler(signum, relay.received, signum)
    try:
        child = await ChildProcess.start(argv, config.target_port)
    except OSError as exc:
        log.error("Failed to start wrapped process", command=argv[0], error=str(exc))
        await http.shutdown(0)
        return 1
    relay.attach(child)
    status = await child.wait()
    log.info("Server stopping", status=status)
    await http.shutdown(SHUTDOWN_GRACE)
    pool.close()
    log.info("Server stopped")
    return status


class SignalRelay:
    """Passes the signals pythrust receives on to the app, once the app exists."""

    def __init__(self, log: JsonLog) -> None:
        self.log = log
        self.child: ChildProcess | None = None
        self.held: list[int] = []

    def received(self, signum: int) -> None:
        self.log.info("Relaying signal to upstream process", signal=signal.Signals(signum).name)
        if self.child is None:
            self.held.append(signum)
        else:
            self.child.relay(signum)

    def attach(self, child: ChildProcess) -> None:
        self.child = child
        for signum in self.held:
            child.relay(signum)
        self.held.clear()
