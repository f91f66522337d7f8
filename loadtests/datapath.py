"""The data path's own cost per proxied request, without the kernel: a stable figure on a noisy machine.

A real ClientConnection and UpstreamConnection exchange a small GET and its
response through fake transports that only count bytes, so no syscall and no
event-loop wake-up is measured, only the Python, uvloop and httptools work
pyproxy adds per request. `--callgrind` runs the loop under valgrind twice and
prints instructions per request (the difference between a short and a long
run, so start-up cancels out): within about 1 % between runs of the same code,
whatever else the machine does. Compare it before and after a change.

`--pythrust` puts pythrust's dispatcher and app connection (thruster/) in place
of pyproxy's, with thruster's default settings, for the same request and
response: a pass-through that the cache, X-Sendfile and compression leave alone
(no `public` Cache-Control, a body below compression's minimum, no Accept-Encoding).

`--http2` sends the same request as HTTP/2 streams, ten at a time in one read as h2load -m 10 does (cleartext:
TLS is the ssl module's cost, not pyproxy's), each answered by its own target connection.

    .venv/bin/python loadtests/datapath.py               # microseconds per request
    .venv/bin/python loadtests/datapath.py --callgrind   # instructions per request (needs valgrind)
    .venv/bin/python loadtests/datapath.py --pythrust --callgrind
    .venv/bin/python loadtests/datapath.py --http2 --callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from typing import Any

import hpack

from proxy.balancer import LoadBalancer
from proxy.challenges import Http01Tokens
from proxy.dispatcher import ServiceDispatcher
from proxy.http.client import ClientConnection
from proxy.http.h2wire import PREFACE
from proxy.http.http2 import Http2Connection
from proxy.http.server import HttpServer
from proxy.http.upstream import UpstreamPool
from proxy.log import JsonLog
from proxy.routing import RoutingTable
from proxy.service import Service, ServiceOptions
from proxy.target import TargetState

REQUEST = b"GET /13 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n\r\n"
RESPONSE = (  # what nginx sends for a 13-byte file
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 22:19:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 13\r\n"
    b"Last-Modified: Thu, 26 Nov 2026 22:18:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6a1f0"\r\nAccept-Ranges: bytes\r\n\r\naaaaaaaaaaaaa'
)


class CountingTransport:
    """Accepts writes and counts bytes; everything else a transport does is a no-op."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...
    def is_closing(self) -> bool:
        return False


def one_service(pool: UpstreamPool) -> ServiceDispatcher:
    """pyproxy's own dispatcher with one service deployed with the default options, whose only target
    is `pool`: what `pyproxy deploy web --target ...` makes."""
    address = f"{pool.host}:{pool.port}"
    dispatcher = ServiceDispatcher(Http01Tokens())
    balancer = LoadBalancer.of([address], state=TargetState.HEALTHY)
    dispatcher.publish(RoutingTable.build([Service("bench", ServiceOptions(), balancer)]))
    key = ("bench", balancer.generation, address)
    dispatcher.pools.endpoint(key).pool = pool  # the harness's pool, for its fake upstream
    return dispatcher


def pythrust_server(log: JsonLog) -> tuple[HttpServer, UpstreamPool]:
    """pythrust's front server (as thruster/front.py makes it) with its app's pool."""
    from thruster.appconnection import AppConnection
    from thruster.config import ThrusterConfig
    from thruster.exchange import AppDispatcher

    pool = UpstreamPool("127.0.0.1", 1, connection_class=AppConnection)
    return HttpServer(AppDispatcher(pool, ThrusterConfig(), log), log, replay_answers=True), pool


async def run_requests(count: int, access_log: bool, pythrust: bool) -> float:
    """Proxy `count` requests on one keep-alive connection; seconds per request."""
    log = JsonLog(fd=os.open(os.devnull, os.O_WRONLY))
    if pythrust:
        server, pool = pythrust_server(log)
    else:
        pool = UpstreamPool("127.0.0.1", 1)
        server = HttpServer(one_service(pool), log)
    if not access_log:
        server.log_request = lambda client, request: None
    upstream = pool.connection_class(pool)
    upstream.connection_made(CountingTransport())
    pool.idle.append(upstream)
    client = ClientConnection(server, b"http", 8080)
    client.connection_made(CountingTransport())
    size = len(RESPONSE)
    started = time.perf_counter()
    for _ in range(count):
        client.data_received(REQUEST)
        buffer = upstream.get_buffer(-1)
        buffer[:size] = RESPONSE
        upstream.buffer_updated(size)
    elapsed = time.perf_counter() - started
    if pool.busy or len(pool.idle) != 1:
        raise SystemExit("datapath.py: the exchange did not complete; the harness is out of date")
    return elapsed / count


STREAMS = 10  # per read, as h2load -m 10 sends them
_FRAME_HEAD = struct.Struct(">BHBBL")
_H2_REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8080"),
    (b":path", b"/13"),
]


def _h2_batches(count: int) -> list[bytes]:
    """`count` reads of STREAMS requests each, as HEADERS frames, and the connection window their responses
    take given back. A header block repeats itself from the second request on (all of it from the table)."""
    encoder = hpack.Encoder()
    fields = [*_H2_REQUEST, (b"user-agent", b"bench")]
    blocks = [encoder.encode(fields), encoder.encode(fields)]
    window = _FRAME_HEAD.pack(0, 4, 8, 0, 0) + (STREAMS * 13).to_bytes(4, "big")
    batches = []
    for read in range(count):
        frames = []
        for stream in range(STREAMS):
            block = blocks[min(read * STREAMS + stream, 1)]
            stream_id = 1 + 2 * (read * STREAMS + stream)
            frames.append(
                _FRAME_HEAD.pack(0, len(block), 1, 0x5, stream_id) + block
            )  # END_STREAM|END_HEADERS
        frames.append(window)
        batches.append(b"".join(frames))
    return batches


async def run_http2_requests(count: int, access_log: bool) -> float:
    """Proxy `count` requests as HTTP/2 streams on one connection; seconds per request."""
    log = JsonLog(fd=os.open(os.devnull, os.O_WRONLY))
    pool = UpstreamPool("127.0.0.1", 1)
    server = HttpServer(one_service(pool), log)
    if not access_log:
        server.log_request = lambda client, request: None
    upstreams = []
    for _ in range(STREAMS):
        upstream = pool.connection_class(pool)
        upstream.connection_made(CountingTransport())
        pool.idle.append(upstream)
        upstreams.append(upstream)
    client = Http2Connection(server, 8080, scheme=b"http")
    client.connection_made(CountingTransport())
    client.data_received(PREFACE + _FRAME_HEAD.pack(0, 0, 4, 0, 0))  # the preface, empty SETTINGS
    batches = _h2_batches(count // STREAMS)
    size = len(RESPONSE)
    started = time.perf_counter()
    for batch in batches:
        client.data_received(batch)
        for upstream in upstreams:
            buffer = upstream.get_buffer(-1)
            buffer[:size] = RESPONSE
            upstream.buffer_updated(size)
        await asyncio.sleep(0)  # the connection's flush of the ten responses, as after a read
    elapsed = time.perf_counter() - started
    if pool.busy or len(pool.idle) != STREAMS or client.streams:
        raise SystemExit("datapath.py: the exchanges did not complete; the harness is out of date")
    return elapsed / len(batches) / STREAMS


def instructions_per_request(access_log: bool, pythrust: bool, http2: bool) -> int:
    """Run this script under callgrind for a short and a long loop; their difference per request."""
    counts = []
    for requests in (2000, 7000):
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
        argv += ["--requests", str(requests), *([] if access_log else ["--no-access-log"])]
        argv += ["--pythrust"] if pythrust else []
        argv += ["--http2"] if http2 else []
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        counts.append(int(re.search(r"Collected : (\d+)", done.stderr).group(1)))
    return (counts[1] - counts[0]) // 5000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000, help="requests in the timed loop")
    parser.add_argument("--no-access-log", action="store_true", help="measure without the access-log line")
    parser.add_argument("--pythrust", action="store_true", help="pythrust's pass-through instead of pyproxy")
    parser.add_argument("--http2", action="store_true", help="HTTP/2 streams (h2c), ten per read")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead of timing")
    args = parser.parse_args()
    if args.callgrind:
        if shutil.which("valgrind") is None:
            print("datapath.py: valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
            return 2
        count = instructions_per_request(not args.no_access_log, args.pythrust, args.http2)
        print(f"{count:,} instructions per request")
        return 0
    try:
        from uvloop import run  # the loop pyproxy runs on
    except ImportError:
        run = asyncio.run
    if args.http2:
        seconds = run(run_http2_requests(args.requests, not args.no_access_log))
    else:
        seconds = run(run_requests(args.requests, not args.no_access_log, args.pythrust))
    print(f"{seconds * 1e6:.2f} us per request (data path only, no syscalls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
