"""`pyproxy run`: restore state, open the listeners and the admin socket, serve until signalled.

With `--workers 1` this one process is control plane and data plane. With more, it is the control
plane (admin socket and API, state file, health checks, deploys and drains, ACME, metrics endpoint)
and binds the listening sockets, which N worker processes accept on (proxy/fleet.py, proxy/worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from dataclasses import dataclass, field

from prometheus_client.multiprocess import MultiProcessCollector

from proxy.admin import AdminApi
from proxy.autocert import AutoCertificates
from proxy.challenges import HTTP01, TLS_ALPN01
from proxy.dataplane import DataPlane, LocalDataPlane
from proxy.fleet import WorkerFleet
from proxy.http.server import HttpLimits, HttpServer, listening_socket
from proxy.log import JsonLog
from proxy.manager import ServiceManager
from proxy.metrics import InFlight, Metrics, MetricsEndpoint, process_registry
from proxy.paths import socket_path, state_path
from proxy.state import StateStore
from proxy.worker import WorkerSettings

SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class RunSettings:
    http_port: int = 80
    https_port: int = 443
    metrics_port: int = 0
    bind: str = ""
    debug: bool = False
    h2c: bool = False
    workers: int = 1
    limits: HttpLimits = field(default_factory=HttpLimits)


def run(settings: RunSettings) -> int:
    """Serve until SIGTERM/SIGINT; the exit status for the process."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))


async def _serve(settings: RunSettings) -> int:
    log = JsonLog(debug=settings.debug, shared=settings.workers > 1)
    bind = settings.bind or None
    store = StateStore(state_path())
    auto = AutoCertificates(log)
    # A file-size limit reached while buffering a body must fail that request (EFBIG), not kill the proxy.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        sockets = (listening_socket(bind, settings.http_port), listening_socket(bind, settings.https_port))
    except OSError as exc:
        log.error("Could not start", error=str(exc))
        return 1
    async with contextlib.AsyncExitStack() as cleanup:
        if settings.workers > 1:
            metrics_dir = tempfile.mkdtemp(prefix="pyproxy-metrics-") if settings.metrics_port else None
            if metrics_dir is not None:
                cleanup.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
            fleet = WorkerFleet(settings.workers, _worker_settings(settings), sockets, log, metrics_dir)
            auto.tokens.on_change = fleet.challenge_mirror(HTTP01)
            auto.alpn_challenges.on_change = fleet.challenge_mirror(TLS_ALPN01)
            plane: DataPlane = fleet
        else:
            local = plane = LocalDataPlane(auto.tokens, auto.alpn_challenges, log)
        manager = ServiceManager(plane, auto, store, log)
        cleanup.push_async_callback(manager.close)
        await _restore(manager, store, log)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        admin = AdminApi(manager)
        try:
            if settings.workers > 1:
                endpoint = _fleet_metrics(fleet, bind, settings.metrics_port, metrics_dir)
                await fleet.start()
                stop_data_plane = fleet.shutdown
            else:
                endpoint, metrics = _local_metrics(bind, settings.metrics_port)
                local.dispatcher.metrics = metrics
                http = HttpServer(local.dispatcher, log, settings.limits, metrics=metrics)
                await http.serve(sockets[0], report_port=settings.http_port, h2c=settings.h2c)
                await http.serve(sockets[1], local.tls, report_port=settings.https_port)
                stop_data_plane = http.shutdown
            if endpoint is not None:
                cleanup.callback(endpoint.stop)
            await admin.start(socket_path())
        except OSError as exc:
            log.error("Could not start", error=str(exc))
            return 1
        log.info(
            "Server started",
            http_port=sockets[0].getsockname()[1],
            https_port=sockets[1].getsockname()[1],
            metrics_port=settings.metrics_port,
            socket=str(socket_path()),
            workers=settings.workers,
        )

        await stopping.wait()

        log.info("Shutting down", grace=f"{SHUTDOWN_GRACE:g}s")
        await admin.stop()
        await stop_data_plane(SHUTDOWN_GRACE)
    log.info("Stopped")
    return 0


async def _restore(manager: ServiceManager, store: StateStore, log: JsonLog) -> None:
    """The services saved by the last run, before any listener serves."""
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


def _worker_settings(settings: RunSettings) -> WorkerSettings:
    return WorkerSettings(
        number=0,
        debug=settings.debug,
        h2c=settings.h2c,
        limits=settings.limits,
        http_port=settings.http_port,
        https_port=settings.https_port,
        metrics=bool(settings.metrics_port),
    )


def _local_metrics(bind: str | None, port: int) -> tuple[MetricsEndpoint | None, Metrics | None]:
    """The metrics of a single process: counted here, served from here (none when `port` is 0)."""
    if not port:
        return None, None
    registry = process_registry()
    metrics = Metrics(registry)
    return MetricsEndpoint(registry, bind, port), metrics


def _fleet_metrics(
    fleet: WorkerFleet, bind: str | None, port: int, metrics_dir: str | None
) -> MetricsEndpoint | None:
    """One endpoint for every worker: their counters summed from the multiprocess files, their in-flight
    gauges asked of them at scrape time."""
    if not port or metrics_dir is None:
        return None
    registry = process_registry()
    MultiProcessCollector(registry, path=metrics_dir)
    registry.register(InFlight(fleet.requests_in_flight_now))
    return MetricsEndpoint(registry, bind, port)
