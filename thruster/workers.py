"""pythrust with WORKERS=N: N-1 more processes accept on the listening sockets pythrust bound.

pythrust itself is worker 1 and everything else (the app, its signals, the exit status, ACME). Its data
plane has little state to hand over (one target, the configuration from the environment, a cache per
worker), so a worker inherits the sockets: one accept queue per port, and a replacement takes the
connections a dead worker left queued. Each worker has a socket pair to pythrust (proxy/channel.py):
down go the certificates pythrust obtained with TLS_DOMAIN and the ACME challenges of its orders (each
acknowledged by every worker before the CA is told to validate, so whichever process the CA reaches
answers); when it closes (pythrust stops, or died) the worker finishes what it serves and exits. A
worker that dies is replaced at once; one whose replacement also dies as it starts, or that cannot be
started (no processes or memory left), after a pause (a crash loop, slowed down).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import Any

from proxy.challenges import CHALLENGE_TIMEOUT, HTTP01, TLS_ALPN01, MirroredChallenges, mirrored
from proxy.channel import Channel
from proxy.log import JsonLog
from proxy.tls import ServedCertificates
from thruster.tls import AcmeCertificates

CRASH_WINDOW = 1.0  # a replacement that dies this soon after it started is replaced after this long
EXIT_GRACE = 2.0  # beyond the shutdown grace, before a worker that has not exited is killed


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.process = process
        self.channel = channel
        self.calls: dict[int, asyncio.Future[None]] = {}  # challenges sent, by call, until acknowledged


class ExtraWorkers:
    """Workers 2..N, kept running until `stop`."""

    def __init__(self, count: int, mode: list[str], log: JsonLog) -> None:
        """`mode`: what pythrust serves, as a worker's arguments: ["app"] or ["serve", DIR]."""
        self.count = count
        self.mode = mode
        self.log = log
        self.workers: dict[int, _Worker] = {}
        self.fds: list[int] = []
        self._served = ServedCertificates()
        self._challenges = MirroredChallenges()
        self._calls = itertools.count()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def mirror(self, certificates: AcmeCertificates) -> None:
        """Send every worker the certificates and ACME challenges of pythrust's orders (TLS_DOMAIN)."""
        certificates.on_served = self._publish_certificates
        for kind, challenges in ((HTTP01, certificates.tokens), (TLS_ALPN01, certificates.alpn_challenges)):
            challenges.on_change = mirrored(kind, self._set_challenge, self._loop, self.log.warn)

    async def start(self, fds: list[int]) -> None:
        """Start the workers, accepting on `fds` (the plain listener, then any HTTPS one)."""
        self.fds = fds
        for number in range(2, self.count + 2):
            await self._spawn(number, replaces=False)

    async def stop(self, grace: float) -> None:
        """Every worker finishes what it serves within `grace`, then exits; stragglers are killed."""
        self._stopping = True
        running = [worker.process for worker in self.workers.values()]
        for worker in self.workers.values():
            worker.channel.close()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace + EXIT_GRACE)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
        for task in self._tasks:  # watchers of exited workers, or a pause before a retry
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _publish_certificates(self, served: ServedCertificates) -> None:
        self._served = served
        for worker in self.workers.values():
            worker.channel.send("certificates", served)

    async def _set_challenge(self, kind: str, key: str, value: bytes | None) -> None:
        """Every live worker has the change once this returns (or CHALLENGE_TIMEOUT has passed)."""
        self._challenges.set(kind, key, value)
        taken: dict[int, tuple[_Worker, int, asyncio.Future[None]]] = {}
        for number, worker in self.workers.items():
            call = next(self._calls)
            future = worker.calls[call] = self._loop.create_future()
            taken[number] = worker, call, future
            worker.channel.send("challenge", call, kind, key, value)
        if taken:
            await asyncio.wait([future for _, _, future in taken.values()], timeout=CHALLENGE_TIMEOUT)
        for number, (worker, call, future) in taken.items():
            if not future.done():
                worker.calls.pop(call, None)
                self.log.warn(
                    "A worker did not take an ACME challenge in time", worker=number, challenge=kind
                )

    async def _spawn(self, number: int, replaces: bool) -> None:
        parent, child = socket.socketpair()
        fds = (child.fileno(), *self.fds)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory (the app's) first on sys.path: a module there is not ours
                "-m",
                "thruster.worker",
                str(number),
                ",".join(map(str, fds)),
                *self.mode,
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            self.log.error("Could not start a worker: trying again", worker=number, error=str(exc))
            self._keep(self._spawn_later(number))
            return
        except BaseException:  # cancelled by `stop`
            parent.close()
            raise
        finally:
            child.close()
        worker = _Worker(process, await Channel.open(parent))
        if self._stopping:  # started while pythrust began to stop: it stops at once
            worker.channel.close()
        else:
            worker.channel.send("start", self._served, self._challenges.snapshot())
        self.workers[number] = worker
        self._keep(self._watch(number, worker, replaces))

    async def _spawn_later(self, number: int) -> None:
        await asyncio.sleep(CRASH_WINDOW)
        if not self._stopping:
            await self._spawn(number, replaces=True)

    async def _watch(self, number: int, worker: _Worker, replaces: bool) -> None:
        """Take the worker's acknowledgements until it exits; then replace it (unless pythrust stops)."""
        started_at = time.monotonic()
        while (message := await worker.channel.receive()) is not None:  # ("taken", call)
            taken = worker.calls.pop(message[1], None)
            if taken is not None and not taken.done():
                taken.set_result(None)
        worker.channel.close()
        if self.workers.get(number) is worker:  # from now on nobody asks it: it cannot answer
            del self.workers[number]
        for taken in worker.calls.values():  # nor waits for what it was asked
            if not taken.done():
                taken.set_result(None)
        status = await worker.process.wait()
        if self._stopping:
            return
        cause = _cause(status)
        self.log.error("Worker exited: starting another", worker=number, pid=worker.process.pid, cause=cause)
        if replaces and time.monotonic() - started_at < CRASH_WINDOW:
            await asyncio.sleep(CRASH_WINDOW)
        if not self._stopping:
            await self._spawn(number, replaces=True)

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside pythrust, referenced until done (the loop keeps only weak references)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _cause(status: int) -> str:
    if status >= 0:
        return f"status {status}"
    try:
        return f"signal {signal.Signals(-status).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {-status}"
