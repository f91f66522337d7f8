"""One of pythrust's extra workers: `python -m thruster.worker NUMBER CONTROL_FD,HTTP_FD[,HTTPS_FD]
app|serve DIR`, started by thruster/workers.py only. It serves what pythrust serves, on the sockets
pythrust bound, with the configuration of the same environment, and with TLS_DOMAIN the certificates and
ACME challenges pythrust sends over CONTROL_FD, until that closes (pythrust is stopping, or gone); then
it finishes what it serves and exits. Signals are pythrust's to act on: it relays them to the app and
stops its workers when the app has exited, so a signal sent to the whole process group (Ctrl-C,
`kill -- -PGID`) stops nothing early.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from proxy.challenges import apply_challenge
from proxy.channel import Channel
from proxy.log import JsonLog
from proxy.tls import ServedCertificates
from thruster.app import app_front, directory_front
from thruster.config import load
from thruster.front import SHUTDOWN_GRACE
from thruster.tls import DomainCertificates


async def serve(number: int, fds: list[int], mode: list[str]) -> int:
    config = load()
    log = JsonLog(debug=config.debug, shared=True)
    control, *listening = fds
    channel = await Channel.open(socket.socket(fileno=control))
    started = await channel.receive()  # ("start", certificates, challenges): before the first request
    if started is None:  # pythrust stopped as this worker started
        return 0
    certificates = None
    if config.tls_domains:
        certificates = DomainCertificates(config, log)
        _, served, challenges = started
        _install(certificates, served, number, log)
        for challenge in challenges:
            apply_challenge(certificates.tokens, certificates.alpn_challenges, *challenge)
    pool = None
    if mode[0] == "serve":
        front = directory_front(mode[1], config, log)
    else:
        front, pool = app_front(config, log)
    await front.adopt([socket.socket(fileno=fd) for fd in listening], certificates)
    log.info("Worker started", worker=number, pid=os.getpid())
    await follow(channel, certificates, number, log)
    channel.close()
    await front.stop()
    if pool is not None:
        pool.close()
    log.debug("Worker stopped", worker=number, grace=SHUTDOWN_GRACE)
    return 0


async def follow(
    channel: Channel, certificates: DomainCertificates | None, number: int, log: JsonLog
) -> None:
    """Install what pythrust sends until it closes the channel (None: no TLS_DOMAIN, nothing comes but
    the end): certificates, and ACME challenges, each acknowledged once it is answered here."""
    while (message := await channel.receive()) is not None:
        kind, *args = message
        if certificates is None:
            continue
        if kind == "certificates":
            _install(certificates, args[0], number, log)
        elif kind == "challenge":
            call, challenge, key, value = args
            apply_challenge(certificates.tokens, certificates.alpn_challenges, challenge, key, value)
            log.debug("ACME challenge taken", challenge=challenge, key=key, removed=value is None)
            channel.send("taken", call)


def _install(certificates: DomainCertificates, served: ServedCertificates, number: int, log: JsonLog) -> None:
    certificates.install(served)
    if served.listed:
        log.info("Certificates installed", worker=number, hosts=[host for host, _ in served.listed])


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):  # pythrust's to act on: see above
        signal.signal(signum, signal.SIG_IGN)
    number, fds, *mode = argv
    work = serve(int(number), [int(fd) for fd in fds.split(",")], mode)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
