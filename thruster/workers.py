"""pythrust with WORKERS=N: N-1 more processes accept on the listening socket pythrust bound.

pythrust itself is worker 1 and everything else (the app, its signals, the exit status). Its data
plane has no state to hand over (one target, the configuration from the environment, a cache per
worker), so a worker needs only the socket, inherited: one accept queue, and a replacement takes the
connections a dead worker left queued. A worker's stdin is a pipe from pythrust: when it closes
(pythrust stops, or died) the worker finishes what it serves and exits. A worker that dies is replaced
at once; one whose replacement also dies as it starts, after a pause (a crash loop, slowed down).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

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
        self._watchers: set[asyncio.Task[None]] = set()

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
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _spawn(self, number: int, replaces: bool) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "thruster.worker",
            str(self.fd),
            str(number),
            *self.mode,
            pass_fds=(self.fd,),
            stdin=asyncio.subprocess.PIPE,
        )
        self.processes[number] = process
        watcher = asyncio.ensure_future(self._watch(number, process, replaces))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, number: int, process: asyncio.subprocess.Process, replaces: bool) -> None:
        started_at = time.monotonic()
        status = await process.wait()
        if self._stopping:
            return
        cause = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        self.log.error("Worker exited: starting another", worker=number, pid=process.pid, cause=cause)
        if replaces and time.monotonic() - started_at < CRASH_WINDOW:
            await asyncio.sleep(CRASH_WINDOW)
        if not self._stopping:
            await self._spawn(number, replaces=True)
