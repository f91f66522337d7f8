"""Idle keep-alive connections are cheap: 10,000 clients that each made one request and wait.

A busy site's browsers keep their connections open between page loads; each one that pyproxy keeps
must cost little memory, or a small host runs out (issue 14: at most 4 KiB each). The test counts
what a real `pyproxy run` grows by, as the kernel sees it (resident memory of its processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from pathlib import Path

import pytest

from proxy.http.client import REST_SECONDS
from proxy.http.server import SWEEP_INTERVAL

CONNECTIONS = 10_000
WARMUP = 200  # opened, used and closed before the first reading: one-off costs are not the connections'
BATCH = 200  # connections opening at once
GROWTH_LIMIT = 60_000_000  # bytes for all of them: 6 KB each (issue 14's acceptance line)
REQUEST = b"GET /idle HTTP/1.1\r\nHost: idle.test\r\nUser-Agent: idle-memory-test\r\n\r\n"
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]

WORKERS = [1, 2]  # with 2, each worker's own growth counts: the connections are split between them


def resident_bytes(pid: int) -> int:
    """VmRSS of a process and of its descendants (a control process and its workers)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


@pytest.fixture
def descriptors() -> None:
    """Room for the client sockets here and for the proxy's (it inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CONNECTIONS + WARMUP + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, RLIMIT_NOFILE allows {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def one_request(port: int) -> Connection:
    """A keep-alive connection that made one GET and read its whole 200 answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    lines = head.lower().split(b"\r\n")
    length = next(int(line[15:]) for line in lines if line.startswith(b"content-length:"))
    await reader.readexactly(length)
    return reader, writer


async def open_answered(port: int, count: int) -> list[Connection]:
    connections: list[Connection] = []
    while len(connections) < count:
        size = min(BATCH, count - len(connections))
        connections += await asyncio.gather(*(one_request(port) for _ in range(size)))
    return connections


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.transport.abort()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", WORKERS, ids=[f"{n}-worker" for n in WORKERS])
async def test_ten_thousand_idle_keep_alive_connections_hold_little_memory(
    descriptors, make_proxy, upstreams, workers
):
    proxy = await make_proxy("--idle-timeout=10m")
    assert (await proxy.deploy("idle", upstreams[0].address)).status == 0
    pid = proxy.process.pid
    # Between requests a connection first keeps its parser for REST_SECONDS (client.py); the readings
    # are taken once the connections opened last have rested, and the server's sweep has seen them.
    settle = REST_SECONDS + 3 * SWEEP_INTERVAL

    close_all(await open_answered(proxy.port, WARMUP))
    await asyncio.sleep(settle)
    before = resident_bytes(pid)
    connections = await open_answered(proxy.port, CONNECTIONS)
    try:
        await asyncio.sleep(settle)
        grown = resident_bytes(pid) - before
        closed = sum(1 for reader, writer in connections if reader.at_eof() or writer.transport.is_closing())
        assert closed == 0, f"{closed} of the idle connections were closed by the proxy"
        # Every 100th goes on with a second request: they are kept open, not just not yet closed.
        await asyncio.gather(*(again(reader, writer) for reader, writer in connections[::100]))
    finally:
        close_all(connections)
    assert grown < GROWTH_LIMIT, (
        f"{CONNECTIONS} idle connections grew pyproxy ({workers} worker(s)) by {grown / 1e6:.1f} MB, "
        f"{grown / CONNECTIONS:,.0f} B each"
    )


async def again(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head


async def test_a_connection_that_rested_forwards_its_next_request_as_its_first(proxy, upstreams):
    """After REST_SECONDS between requests the connection has let go of its parser and header lines
    (client.py); the next request on it must reach the target and the access log as the first did."""
    assert (await proxy.deploy("idle", upstreams[0].address)).status == 0
    reader, writer = await one_request(proxy.port)
    try:
        await asyncio.sleep(REST_SECONDS + 3 * SWEEP_INTERVAL)
        writer.write(REQUEST.replace(b"/idle", b"/after-rest"))
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next(int(line[15:]) for line in lines if line.startswith(b"content-length:"))
        seen = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert seen["path"] == "/after-rest"
    forwarded = {k.lower(): v for k, v in seen["headers"].items() if k.lower().startswith("x-forwarded-")}
    assert forwarded == {
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "idle.test",
    }
    line = await proxy.wait_for_log("Request", path="/after-rest")
    assert (line["client_addr"], line["scheme"], line["port"]) == ("127.0.0.1", "http", proxy.port)


async def test_a_burst_leaves_its_pooled_target_connections_without_read_buffers(proxy, upstreams):
    """After a burst of concurrent requests the proxy keeps their target connections pooled for the
    next burst; a pooled connection must not keep the 256 KiB it read its 200 KB response into."""
    assert (await proxy.deploy("idle", upstreams[0].address)).status == 0
    burst = 200
    slow = REQUEST.replace(b"/idle", b"/slow?s=0.5&bytes=200000")
    slow = slow.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")

    async def one_slow() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(slow)
        assert (await reader.read(-1)).startswith(b"HTTP/1.1 200 ")
        writer.close()

    await asyncio.gather(*(one_slow() for _ in range(20)))  # one-off costs before the reading
    before = resident_bytes(proxy.process.pid)
    await asyncio.gather(*(one_slow() for _ in range(burst)))
    grown = resident_bytes(proxy.process.pid) - before
    assert grown < burst * 64 * 1024, f"{burst} pooled target connections hold {grown / burst:,.0f} B each"
