"""`pythrust CMD...`: bind, start the app with PORT, proxy to it, and exit when it does
(and `pythrust serve DIR`, with no app). With WORKERS=N, N-1 more processes accept on the same sockets
(thruster/workers.py).

The HTTP engine is the proxy's own (proxy/http): the same parsing, limits,
keep-alive pool and error handling, with one target, 127.0.0.1:TARGET_PORT.
Listeners are bound before the app starts, so a port conflict stops pythrust
before the app runs; requests that arrive while the app is still starting get
the 502 page (BAD_GATEWAY_PAGE, a good place for a "starting up" page).
"""

from __future__ import annotations

import asyncio
import signal

from proxy.http.upstream import UpstreamPool
from proxy.log import JsonLog
from thruster.appconnection import AppConnection
from thruster.child import RELAYED_SIGNALS, ChildProcess
from thruster.config import ThrusterConfig
from thruster.exchange import AppDispatcher
from thruster.front import SHUTDOWN_GRACE, FrontServers
from thruster.serve import NOT_FOUND_PAGE, StaticFiles
from thruster.workers import ExtraWorkers


def read_page(path: str, log: JsonLog) -> bytes | None:
    """The 502 page, read once at start; missing is normal (thruster's default path)."""
    try:
        with open(path, "rb") as page:
            return page.read()
    except OSError as exc:
        log.debug("No bad gateway page", path=path, error=exc.strerror)
        return None


def app_front(config: ThrusterConfig, log: JsonLog) -> tuple[FrontServers, UpstreamPool]:
    """The listeners of app mode and their pool to the app (in pythrust and in each worker)."""
    pool = UpstreamPool("127.0.0.1", config.target_port, connection_class=AppConnection)
    pool.on_error = lambda address, exc: log.info("Unable to proxy request", target=address, error=str(exc))
    page = read_page(config.bad_gateway_page, log)
    front = FrontServers(
        AppDispatcher(pool, config, log), config, log, {502: page} if page is not None else None
    )
    return front, pool


def directory_front(root: str, config: ThrusterConfig, log: JsonLog) -> FrontServers:
    """The listeners of `pythrust serve DIR`."""
    return FrontServers(StaticFiles(root, config, log), config, log, {404: NOT_FOUND_PAGE})


async def serve(argv: list[str], config: ThrusterConfig) -> int:
    """Run the app behind the proxy engine until it exits; returns pythrust's exit status."""
    log = JsonLog(debug=config.debug, shared=config.workers > 1)
    loop = asyncio.get_running_loop()
    front, pool = app_front(config, log)
    workers = ExtraWorkers(config.workers - 1, ["app"], log)
    if not await front.start(workers):
        return 1
    # Handlers first: a signal that comes while the workers and the app are being started is held for
    # the app, not lost (nor does it kill pythrust and leave the app running alone).
    relay = SignalRelay(log)
    for signum in RELAYED_SIGNALS:
        loop.add_signal_handler(signum, relay.received, signum)
    await workers.start(front.listening_fds())
    try:
        child = await ChildProcess.start(argv, config.target_port)
    except OSError as exc:
        log.error("Failed to start wrapped process", command=argv[0], error=str(exc))
        status = 1
    else:
        relay.attach(child)
        status = await child.wait()
        log.info("Server stopping", status=status)
    await asyncio.gather(front.stop(), workers.stop(SHUTDOWN_GRACE))
    pool.close()
    log.info("Server stopped")
    return status


async def serve_directory(root: str, config: ThrusterConfig) -> int:
    """`pythrust serve DIR`: serve the files under `root` until SIGTERM or SIGINT."""
    log = JsonLog(debug=config.debug, shared=config.workers > 1)
    front = directory_front(root, config, log)
    workers = ExtraWorkers(config.workers - 1, ["serve", root], log)
    if not await front.start(workers):
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await workers.start(front.listening_fds())
    await stopping.wait()
    log.info("Server stopping")
    await asyncio.gather(front.stop(), workers.stop(SHUTDOWN_GRACE))
    log.info("Server stopped")
    return 0


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
