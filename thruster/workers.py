"""pythrust with WORKERS=N: N-1 more processes accept on the listening socket pythrust bound.

pythrust itself is worker 1 and everything else (the app, its signals, the exit status). Its data
plane has no state to hand over (one target, the configuration from the environment, a cache per
worker), so a worker needs only the socket, inherited: one accept queue, and a replacement takes the
connections a dead worker left queued. A worker's stdin is a pipe from pythrust: when it closes
(pythrust stops, or died) the worker finishes what it serves and exits. A worker that dies is replaced
at once; one whose replacement also dies as it starts, or that cannot be started (no processes or memory
left), after a pause (a crash loop, slowed down).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from proxy.log import JsonLog

CRASH_WINDOW = 1.0  # a replacement that dies this soon after it started is replaced after this long
EXIT_GRACE = 2.0  # beyond the shutdown grace, before a worker that has not exited is killed


class ExtraWorkers:
    """Workers 2..N, kept running until `stop`."""

    def __init__(self, count: int, fd: int, mode: list[str], log: JsonLog) -> None:
        """`mode`: what pythrust serves, as a worker's arguments: ["app"] or ["serve", DIR]."""
        self.count = count
        self.fd = fd
        self.mode = mode
        self.log = log
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for number in range(2, self.count + 2):
            await self._spawn(number, replaces=False)

    async def stop(self, grace: float) -> None:
        """Every worker finishes what it serves within `grace`, then exits; stragglers are killed."""
        self._stopping = True
        running = list(self.processes.values())
        for process in running:
            process.stdin.close()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace + EXIT_GRACE)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
        for task in self._tasks:  # watchers of exited workers, or a pause before a retry
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _spawn(self, number: int, replaces: bool) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory (the app's) first on sys.path: a module there is not ours
                "-m",
                "thruster.worker",
                str(self.fd),
                str(number),
                *self.mode,
                pass_fds=(self.fd,),
                stdin=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.log.error("Could not start a worker: trying again", worker=number, error=str(exc))
            self._keep(self._spawn_later(number))
            return
        if self._stopping:  # started while pythrust began to stop: it stops at once
            process.stdin.close()
        self.processes[number] = process
        self._keep(self._watch(number, process, replaces))

    async def _spawn_later(self, number: int) -> None:
        await asyncio.sleep(CRASH_WINDOW)
        if not self._stopping:
            await self._spawn(number, replaces=True)

    async def _watch(self, number: int, process: asyncio.subprocess.Process, replaces: bool) -> None:
        started_at = time.monotonic()
        status = await process.wait()
        if self._stopping:
            return
        cause = _cause(status)
        self.log.error("Worker exited: starting another", worker=number, pid=process.pid, cause=cause)
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
