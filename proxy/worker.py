"""A data-plane worker process (`pyproxy run --workers N`, N > 1): HTTP/1.1, HTTP/2, TLS, h2c and
WebSockets on the listening sockets the control process bound, routed by the table it is sent.

`python -m proxy.worker CONTROL_FD HTTP_FD HTTPS_FD`, started by proxy/fleet.py only. The worker decides
nothing the control process owns: it serves the last table, certificates and ACME challenges it was sent,
answers what it is asked (requests in flight, drains, held requests, in-flight counts for metrics) and
asks for an on-demand certificate when a handshake needs one. When its control socket closes (the control
process exited or was killed) it stops accepting at once and exits: nobody could change its table.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from proxy.challenges import Http01Tokens, TlsAlpnChallenges, apply_challenge
from proxy.channel import Channel
from proxy.dataplane import LocalDataPlane
from proxy.http.server import HttpLimits, HttpServer
from proxy.log import JsonLog
from proxy.metrics import Metrics

ORPHAN_GRACE = 1.0  # after the control process is gone: requests in progress get this long
SIGNAL_GRACE = 10.0  # SIGTERM sent to the worker itself (systemd signals every process): as `run`'s


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs of `pyproxy run`'s flags."""

    number: int  # 1..N, for the log
    debug: bool
    h2c: bool
    limits: HttpLimits
    http_port: int  # as configured (the one logged)
    https_port: int
    metrics: bool


class ControlLink:
    """The worker's side of its control socket: applies what it is sent and answers what it is asked."""

    def __init__(self, channel: Channel, plane: LocalDataPlane, metrics: Metrics | None) -> None:
        self.channel = channel
        self.plane = plane
        self.metrics = metrics
        self._asks = itertools.count()
        self._asked: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        plane.ask_certificate = self.ask_certificate

    def apply_challenge(self, kind: str, key: str, value: bytes | None) -> None:
        apply_challenge(self.plane.dispatcher.tokens, self.plane.tls.alpn_challenges, kind, key, value)

    def ask_certificate(self, server_name: str) -> Awaitable[None]:
        """A handshake for a name without a certificate waits for the control process to ready one (it
        sends the certificates first, then the answer)."""
        ask = next(self._asks)
        answered = self._asked[ask] = asyncio.get_running_loop().create_future()
        self.channel.send("ask_certificate", ask, server_name)
        return answered

    async def run(self) -> float | None:
        """Serve messages until told to shut down (returns the grace) or the control process is gone."""
        while True:
            message = await self.channel.receive()
            if message is None:
                return None
            kind, *args = message
            if kind == "shutdown":
                return args[0]
            self._handle(kind, *args)

    def _handle(self, kind: str, *args: Any) -> None:
        plane = self.plane
        if kind == "table":
            plane.publish(args[0])
        elif kind == "certificates":
            plane.publish_certificates(args[0])
        elif kind == "certificate":
            answered = self._asked.pop(args[0], None)
            if answered is not None and not answered.done():
                answered.set_result(None)
        elif kind == "challenge":
            call, challenge, key, value = args
            self.apply_challenge(challenge, key, value)
            self._reply(call, None)
        elif kind == "in_flight":
            self._reply(args[0], plane.dispatcher.in_flight(args[1]))
        elif kind == "held":
            self._reply(args[0], plane.dispatcher.held(args[1]))
        elif kind == "requests_in_flight":
            counts = dict(self.metrics.in_flight) if self.metrics is not None else {}
            self._reply(args[0], counts)
        elif kind == "drain":
            self._spawn(self._drain(*args))

    async def _drain(self, call: int, keys: list[Any], timeout: float) -> None:
        self._reply(call, await self.plane.dispatcher.drain(keys, timeout))

    def _reply(self, call: int, value: Any) -> None:
        self.channel.send("reply", call, value)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve(control_fd: int, http_fd: int, https_fd: int) -> int:
    channel = await Channel.open(socket.socket(fileno=control_fd))
    start = await channel.receive()
    if start is None:
        return 1
    _, settings, table, served, challenges = start
    log = JsonLog(debug=settings.debug, shared=True)
    plane = LocalDataPlane(Http01Tokens(), TlsAlpnChallenges(), log)
    metrics = Metrics() if settings.metrics else None
    plane.dispatcher.metrics = metrics
    link = ControlLink(channel, plane, metrics)
    for challenge in challenges:
        link.apply_challenge(*challenge)
    plane.publish(table)
    plane.publish_certificates(served)
    http = HttpServer(plane.dispatcher, log, settings.limits, metrics=metrics)
    await http.serve(socket.socket(fileno=http_fd), None, settings.http_port, settings.h2c)
    await http.serve(socket.socket(fileno=https_fd), plane.tls, settings.https_port)
    told = asyncio.ensure_future(link.run())
    signalled = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, signalled.set_result, SIGNAL_GRACE)
    channel.send("ready", os.getpid())
    done, _ = await asyncio.wait([told, signalled], return_when=asyncio.FIRST_COMPLETED)
    grace = done.pop().result()
    if grace is None:
        log.warn("Control process gone: worker stopping", worker=settings.number)
        grace = ORPHAN_GRACE
    await http.shutdown(grace)
    channel.close()
    return 0


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the control process decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as in the control process (proxy/app.py)
    fds = [int(arg) for arg in argv]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(*fds))
    return uvloop.run(serve(*fds))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
