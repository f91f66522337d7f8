"""One of pythrust's extra workers: `python -m thruster.worker FD NUMBER app|serve DIR`, started by
thruster/workers.py only. It serves what pythrust serves, on the socket FD pythrust bound, with the
configuration of the same environment, until its stdin closes (pythrust is stopping, or gone); then it
finishes what it serves and exits. Signals are pythrust's to act on: it relays them to the app and stops
its workers when the app has exited, so a signal sent to the whole process group (Ctrl-C, `kill -- -PGID`)
stops nothing early.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from proxy.log import JsonLog
from thruster.app import app_front, directory_front
from thruster.config import load
from thruster.front import SHUTDOWN_GRACE


async def serve(fd: int, number: int, mode: list[str]) -> int:
    config = load()
    log = JsonLog(debug=config.debug, shared=True)
    pool = None
    if mode[0] == "serve":
        front = directory_front(mode[1], config, log)
    else:
        front, pool = app_front(config, log)
    await front.adopt(socket.socket(fileno=fd))
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stopping.set)  # readable only at its end: pythrust wrote nothing
    log.info("Worker started", worker=number, pid=os.getpid())
    await stopping.wait()
    loop.remove_reader(sys.stdin.fileno())
    await front.stop()
    if pool is not None:
        pool.close()
    log.debug("Worker stopped", worker=number, grace=SHUTDOWN_GRACE)
    return 0


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):  # pythrust's to act on: see above
        signal.signal(signum, signal.SIG_IGN)
    fd, number, *mode = argv
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(int(fd), int(number), mode))
    return uvloop.run(serve(int(fd), int(number), mode))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
