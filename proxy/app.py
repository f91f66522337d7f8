"""`pyproxy run`: restore state, open the listeners and the admin socket, serve until signalled."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

from proxy.admin import AdminApi
from proxy.autocert import AutoCertificates
from proxy.dispatcher import ServiceDispatcher
from proxy.http.server import HttpLimits, HttpServer
from proxy.log import JsonLog
from proxy.manager import ServiceManager
from proxy.metrics import Metrics
from proxy.paths import socket_path, state_path
from proxy.state import StateStore
from proxy.tls import TlsTerminator

SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class RunSettings:
    http_port: int = 80
    https_port: int = 443
    metrics_port: int = 0
    bind: str = ""
    debug: bool = False
    h2c: bool = False
    limits: HttpLimits = field(default_factory=HttpLimits)


def run(settings: RunSettings) -> int:
    """Serve until SIGTERM/SIGINT; the exit status for the process."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))


async def _serve(settings: RunSettings) -> int:
    log = JsonLog(debug=settings.debug)
    bind = settings.bind or None
    store = StateStore(state_path())
    auto = AutoCertificates(log)
    tls = TlsTerminator(auto.alpn_challenges)
    dispatcher = ServiceDispatcher(auto.tokens)
    manager = ServiceManager(dispatcher, tls, auto, store, log)
    saved = store.load()
    if not saved.found:
        log.info("No previous state to restore", path=str(store.path))  # kamal-proxy's words; Kamal checks
    elif saved.problem:
        log.error(
            "Saved state is damaged: restoring what could be read",
            path=str(store.path),
            error=saved.problem,
            moved_to=str(saved.moved_to) if saved.moved_to else "(could not move it; not saving until fixed)",
            services=len(saved.services),
        )
    manager.restore(saved.services)
    if saved.moved_to is not None:
        await manager.persist()  # a fresh state file at once: the next restart must find what was saved

    # A file-size limit reached while buffering a body must fail that request (EFBIG), not kill the proxy.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    metrics = Metrics.start(bind, settings.metrics_port) if settings.metrics_port else None
    dispatcher.metrics = metrics
    http = HttpServer(dispatcher, log, settings.limits, metrics=metrics)
    admin = AdminApi(manager)
    try:
        server = await http.listen(bind, settings.http_port, report_port=settings.http_port, h2c=settings.h2c)
        secure = await http.listen(bind, settings.https_port, tls, report_port=settings.https_port)
        await admin.start(socket_path())
    except OSError as exc:
        log.error("Could not start", error=str(exc))
        await manager.close()
        return 1
    log.info(
        "Server started",
        http_port=server.sockets[0].getsockname()[1],
        https_port=secure.sockets[0].getsockname()[1],
        metrics_port=settings.metrics_port,
        socket=str(socket_path()),
    )

    await stopping.wait()

    log.info("Shutting down", grace=f"{SHUTDOWN_GRACE:g}s")
    await admin.stop()
    await http.shutdown(SHUTDOWN_GRACE)
    await manager.close()
    if metrics is not None:
        metrics.stop()
    log.info("Stopped")
    return 0
