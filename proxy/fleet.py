"""N data-plane worker processes, driven by the control process as one `DataPlane` (proxy/dataplane.py).

The control process binds the listening sockets once and every worker inherits them and accepts on
them. Chosen over SO_REUSEPORT because a replacement worker inherits the very sockets the others
accept on: with SO_REUSEPORT the kernel hashes each new connection to one socket, and the connections
queued on a dead worker's socket are lost with it (and a port another program also bound with
SO_REUSEPORT would be shared with it). One accept queue per port also means a busy worker takes fewer
connections instead of getting its hash share.

Each worker has its own socket pair to the control process (proxy/channel.py). Down go values: the
table, the certificates served (files: each worker loads its own contexts), ACME challenges (each change
acknowledged by every worker before the CA is told to validate). Up come answers: requests in flight per
(service, deploy, address), drains, held requests, in-flight counts for metrics, and on-demand
certificate requests. A worker that dies is replaced at once (a replacement that dies as it starts, a
crash loop, after a pause); one that does not confirm a drain in time is named to the deploy and replaced.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from proxy.challenges import CHALLENGE_TIMEOUT, MirroredChallenges, mirrored
from proxy.channel import Channel
from proxy.dataplane import CertificateRequest, Drained, no_certificate
from proxy.log import JsonLog
from proxy.pools import PoolKey
from proxy.routing import RoutingTable
from proxy.tls import ServedCertificates
from proxy.worker import WorkerSettings

START_TIMEOUT = 30.0  # for a worker to report ready
CONFIRM_GRACE = 0.5  # beyond a drain's timeout, how long a worker has to report it
ANSWER_TIMEOUT = 0.5  # for a question (in flight, held): a healthy worker answers in a millisecond
CRASH_WINDOW = 1.0  # a replacement that dies this soon after it started is replaced after this long
EXIT_GRACE = 2.0  # beyond the shutdown grace, before a worker that has not exited is killed


class Worker:
    """One worker process as the control process sees it."""

    def __init__(
        self, number: int, process: asyncio.subprocess.Process, channel: Channel, replaces: bool
    ) -> None:
        """`replaces`: it was started in place of a worker that died (not by `start`)."""
        self.number = number
        self.replaces = replaces
        self.process = process
        self.channel = channel
        self.started_at = time.monotonic()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls: dict[int, asyncio.Future[Any]] = {}

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.process.pid})"

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


class WorkerFleet:
    """The control process's data plane: N workers kept running, each sent every change."""

    def __init__(
        self,
        count: int,
        settings: WorkerSettings,
        sockets: tuple[socket.socket, socket.socket],
        log: JsonLog,
        metrics_dir: str | None = None,
    ) -> None:
        """`metrics_dir`: where workers keep their counts (prometheus_client's multiprocess mode)."""
        self.count = count
        self.settings = settings
        self.sockets = sockets
        self.log = log
        self.metrics_dir = metrics_dir
        self.ask_certificate: CertificateRequest = no_certificate
        self.workers: dict[int, Worker] = {}  # by number, 1..N: the live ones
        self._table = RoutingTable.build(())
        self._served = ServedCertificates()
        self._challenges = MirroredChallenges()
        self._calls = itertools.count()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Start every worker and wait until each accepts; OSError if one cannot start."""
        workers = [await self._spawn(number, replaces=False) for number in range(1, self.count + 1)]
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready for w in workers)), START_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            for worker in workers:
                worker.kill()
            raise OSError(f"workers did not start: {exc or 'timed out'}") from None

    # -- what the control plane publishes --------------------------------------------------

    def publish(self, table: RoutingTable) -> None:
        self._table = table
        self._broadcast("table", table)

    def publish_certificates(self, served: ServedCertificates) -> None:
        self._served = served
        self._broadcast("certificates", served)

    def challenge_mirror(self, kind: str) -> Callable[[str, bytes | None], None]:
        """An `on_change` for Http01Tokens (HTTP01) or TlsAlpnChallenges (TLS_ALPN01), run in the ACME
        issuer's thread: proxy/challenges.py `mirrored`."""
        return mirrored(kind, self._set_challenge, self._loop, self.log.warn)

    async def _set_challenge(self, kind: str, key: str, value: bytes | None) -> None:
        self._challenges.set(kind, key, value)
        await self._ask_all(CHALLENGE_TIMEOUT, "challenge", kind, key, value)

    # -- what it asks ---------------------------------------------------------------------------

    async def applied(self) -> None:
        """Every worker has taken what was sent before (its answer comes after them on its channel); a
        hung one is not waited for beyond ANSWER_TIMEOUT."""
        await self._ask_all(ANSWER_TIMEOUT, "in_flight", [])

    async def in_flight(self, keys: Iterable[PoolKey]) -> int:
        return sum(_answered(await self._ask_all(ANSWER_TIMEOUT, "in_flight", list(keys))))

    async def held(self, name: str) -> int:
        return sum(_answered(await self._ask_all(ANSWER_TIMEOUT, "held", name)))

    async def requests_in_flight(self) -> dict[bytes, int]:
        """In-flight requests by service over every worker (the metrics gauge)."""
        total: dict[bytes, int] = {}
        for counts in _answered(await self._ask_all(ANSWER_TIMEOUT, "requests_in_flight")):
            for service, count in counts.items():
                total[service] = total.get(service, 0) + count
        return total

    def requests_in_flight_now(self) -> dict[bytes, int]:
        """`requests_in_flight` from another thread (Prometheus scrapes in its own)."""
        asked = asyncio.run_coroutine_threadsafe(self.requests_in_flight(), self._loop)
        return asked.result(ANSWER_TIMEOUT + 1.0)

    async def drain(self, keys: Iterable[PoolKey], timeout: float) -> Drained:
        """Every worker drains these targets; one that has not reported by `timeout` (plus a little for the
        answer to travel) is named and replaced: it is hung, and its requests are lost with it."""
        answers = await self._ask_all(timeout + CONFIRM_GRACE, "drain", list(keys), timeout)
        unconfirmed = []
        for worker, cut in answers.items():
            if cut is _UNANSWERED:
                unconfirmed.append(worker.name)
                self.log.warn("Worker did not confirm the drain: replacing it", worker=worker.name)
                worker.kill()
        return Drained(sum(_answered(answers)), tuple(unconfirmed))

    async def shutdown(self, grace: float) -> None:
        """Every worker finishes what it serves within `grace`, then exits; stragglers are killed."""
        self._stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            worker.channel.send("shutdown", grace)
        exits = [worker.process.wait() for worker in workers]
        try:
            await asyncio.wait_for(asyncio.gather(*exits), grace + EXIT_GRACE)
        except TimeoutError:
            for worker in workers:
                worker.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals ------------------------------------------------------------------------------

    def _broadcast(self, *message: Any) -> None:
        for worker in self.workers.values():
            worker.channel.send(*message)

    async def _ask_all(self, timeout: float, kind: str, *args: Any) -> dict[Worker, Any]:
        """Ask every live worker; a worker that dies meanwhile answers None, one that is too late
        `_UNANSWERED`."""
        asked = {}
        for worker in list(self.workers.values()):
            call = next(self._calls)
            answer = worker.calls[call] = self._loop.create_future()
            worker.channel.send(kind, call, *args)
            asked[worker] = answer
        if asked:
            await asyncio.wait(asked.values(), timeout=timeout)
        answers = {}
        for worker, answer in asked.items():
            answers[worker] = answer.result() if answer.done() else _UNANSWERED
            if not answer.done():
                answer.cancel()
        return answers

    async def _spawn(self, number: int, replaces: bool) -> Worker:
        parent, child = socket.socketpair()
        fds = (child.fileno(), *(s.fileno() for s in self.sockets))
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not the working directory first on sys.path: a module of that name there is not ours
            "-m",
            "proxy.worker",
            *map(str, fds),
            pass_fds=fds,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        child.close()
        worker = Worker(number, process, await Channel.open(parent), replaces)
        self.workers[number] = worker
        settings = replace(self.settings, number=number)
        worker.channel.send("start", settings, self._table, self._served, self._challenges.snapshot())
        self._keep(self._listen(worker))
        if self._stopping:  # a replacement started as the fleet began to stop: it has served nothing
            worker.kill()  # and `shutdown` did not ask it to exit, so it must not be waited for
        return worker

    async def _listen(self, worker: Worker) -> None:
        """Read the worker's messages until it exits; then replace it (unless the fleet is stopping)."""
        while (message := await worker.channel.receive()) is not None:
            kind, *args = message
            if kind == "ready":
                worker.ready.set_result(None)
                self.log.info("Worker started", worker=worker.number, pid=worker.process.pid)
            elif kind == "reply":
                answer = worker.calls.pop(args[0], None)
                if answer is not None and not answer.done():
                    answer.set_result(args[1])
            elif kind == "ask_certificate":
                self._keep(self._ready_certificate(worker, *args))
        worker.channel.close()
        if self.workers.get(worker.number) is worker:  # from now on nobody asks it: it cannot answer
            del self.workers[worker.number]
        for answer in worker.calls.values():  # its requests are gone with it: nothing to wait for
            if not answer.done():
                answer.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(OSError(f"{worker.name} exited before it was ready"))
        status = await worker.process.wait()
        if self._stopping:
            return
        cause = f"signal {-status}" if status < 0 else f"status {status}"
        self.log.error("Worker exited: starting another", worker=worker.name, cause=cause)
        if worker.replaces and time.monotonic() - worker.started_at < CRASH_WINDOW:
            await asyncio.sleep(CRASH_WINDOW)  # replacements die as they start: a crash loop, slowed down
        if not self._stopping:
            try:
                await self._spawn(worker.number, replaces=True)
            except OSError as exc:
                self.log.error("Could not start a worker", worker=worker.number, error=str(exc))

    async def _ready_certificate(self, worker: Worker, ask: int, server_name: str) -> None:
        """A worker's handshake waits for a certificate: get it ready, then say so (after the
        certificates it brought were sent, on the same channel)."""
        waiting: Awaitable[None] | None = self.ask_certificate(server_name)
        if waiting is not None:
            try:
                await waiting
            except Exception as exc:  # the handshake fails for want of a certificate; the worker goes on
                self.log.error("On-demand certificate failed", host=server_name, error=str(exc))
        worker.channel.send("certificate", ask)

    def _keep(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_UNANSWERED = object()


def _answered(answers: dict[Worker, Any]) -> list[Any]:
    """The answers of the workers that gave one (not dead, not too late)."""
    return [answer for answer in answers.values() if answer is not None and answer is not _UNANSWERED]
