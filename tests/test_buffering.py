"""Request and response buffering (proxy/http/buffering.py) through the engine, against real targets.

The engine runs in the test's loop (tests/buffer_server.py) except where the
proxy's own process is measured or constrained (RSS, a file-size limit): then
it runs as a process of its own. $TMPDIR points at a fresh directory, so what
the proxy spills, and that it is gone afterwards, can be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import h2.exceptions
import pytest
import trustme

from proxy.http.buffering import FILE_PREFIX, BufferPolicy
from proxy.log import JsonLog
from tests.buffer_server import Engine, start_engine
from tests.h2client import H2Client
from tests.raw_target import RawTarget, Received, read_body, read_response

KiB = 1024
MiB = 1024 * 1024
PAGE_413 = b"<h1>this service's own 413</h1>"


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "spill"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


class Running:
    """An engine with one buffering service, and its log."""

    def __init__(self, tmp_path: Path, target: RawTarget) -> None:
        self.log_path = tmp_path / "engine.log"
        self.log = JsonLog(fd=os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        self.target = target
        self.engines: list[Engine] = []

    async def start(self, policy: BufferPolicy | None, **options) -> Engine:
        engine = await start_engine(self.target.address, policy, self.log, **options)
        self.engines.append(engine)
        return engine

    def lines(self) -> list[dict]:
        self.log.flush()
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


@pytest.fixture
async def engines(tmp_path: Path, target: RawTarget) -> AsyncIterator[Running]:
    running = Running(tmp_path, target)
    yield running
    for engine in running.engines:
        await engine.stop()
    os.close(running.log.fd)


def spilled(directory: Path) -> list[Path]:
    return sorted(directory.glob(FILE_PREFIX + "*"))


async def until(condition: Callable[[], object], timeout: float = 10) -> None:
    """Wait for something the proxy does on its own (a file written or removed, a log line)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def connect(engine: Engine) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", engine.port)


def post_head(length: int | None, path: str = "/upload", extra: bytes = b"") -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST %s HTTP/1.1\r\nHost: app.test\r\n%s\r\n%s\r\n" % (path.encode(), framing, extra)


def chunked(body: bytes, size: int = 64 * KiB) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- request buffering ----------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_buffered_upload_reaches_the_target_whole_with_a_content_length(
    engines, target, spill_dir, framing
):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    body = os.urandom(3 * MiB)
    reader, writer = await connect(engine)
    if framing == "chunked":
        writer.write(post_head(None) + chunked(body))
    else:
        writer.write(post_head(len(body)) + body)
    head, answer = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    got = json.loads(answer)
    assert (got["length"], got["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    sent = Received(got["head"].encode("latin-1"))
    assert sent.header(b"content-length") == b"%d" % len(body), "a whole body goes with its length"
    assert sent.header(b"transfer-encoding") is None
    await until(lambda: not spilled(spill_dir))


async def test_the_target_sees_nothing_until_a_slow_upload_is_complete(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    body = os.urandom(1 * MiB)
    reader, writer = await connect(engine)
    writer.write(post_head(len(body)) + body[: 600 * KiB])
    # The part past the first 64 KiB is on disk, in a file only the proxy's user may read.
    await until(lambda: spilled(spill_dir) and spilled(spill_dir)[0].stat().st_size >= 500 * KiB)
    (spill,) = spilled(spill_dir)
    assert stat.S_IMODE(spill.stat().st_mode) == 0o600
    assert target.connections == 0, "nothing is sent to the target before the body is whole"
    writer.write(body[600 * KiB :])
    head, answer = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["sha256"] == sha(body)
    assert target.connections == 1
    await until(lambda: not spilled(spill_dir))


async def test_an_upload_declared_over_the_limit_gets_the_services_413_at_once(engines, target, spill_dir):
    policy = BufferPolicy(requests=True, memory=64 * KiB, max_request_body=1 * MiB)
    engine = await engines.start(policy, pages={413: PAGE_413})
    reader, writer = await connect(engine)
    writer.write(post_head(2 * MiB, extra=b"Expect: 100-continue\r\n"))  # and never sends the body
    response = await asyncio.wait_for(reader.read(-1), 10)  # the proxy closes
    writer.close()
    assert response.startswith(b"HTTP/1.1 413 ") and response.endswith(PAGE_413)
    assert b"100 Continue" not in response
    assert target.connections == 0 and not spilled(spill_dir)


async def test_a_chunked_upload_over_the_limit_gets_413_and_its_file_is_removed(engines, target, spill_dir):
    policy = BufferPolicy(requests=True, memory=64 * KiB, max_request_body=1 * MiB)
    engine = await engines.start(policy, pages={413: PAGE_413})
    reader, writer = await connect(engine)
    writer.write(post_head(None) + chunked(os.urandom(900 * KiB))[:-5])
    await until(lambda: spilled(spill_dir))  # under the limit so far: spilling
    writer.write(chunked(os.urandom(200 * KiB)))
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 413 ") and response.endswith(PAGE_413)
    assert b"Connection: close" in response
    assert target.connections == 0
    await until(lambda: not spilled(spill_dir))
    assert [line["status"] for line in engines.lines() if line["msg"] == "Request"] == [413]


async def test_expect_100_continue_is_answered_by_the_proxy_when_it_buffers(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True))
    reader, writer = await connect(engine)
    writer.write(post_head(5, extra=b"Expect: 100-continue\r\n"))
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    _, answer = await read_response(reader)
    writer.close()
    got = json.loads(answer)
    assert got["length"] == 5 and Received(got["head"].encode()).header(b"expect") is None


async def test_a_client_that_aborts_mid_upload_leaves_no_file_and_no_error(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    _, writer = await connect(engine)
    writer.write(post_head(4 * MiB) + os.urandom(1 * MiB))
    await until(lambda: spilled(spill_dir))
    writer.transport.abort()
    await until(lambda: any(line["msg"] == "Request" for line in engines.lines()))
    await until(lambda: not spilled(spill_dir))
    lines = engines.lines()
    assert [line["status"] for line in lines if line["msg"] == "Request"] == [499]
    assert not [line for line in lines if line["level"] == "ERROR"]
    assert target.connections == 0
    assert not engine.service.pool.busy, "the buffered request no longer counts as in flight"


async def test_a_missing_temp_dir_fails_that_request_with_500_and_others_are_served(
    engines, target, tmp_path, monkeypatch
):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    reader, writer = await connect(engine)
    writer.write(post_head(1 * MiB) + os.urandom(1 * MiB))
    head, _ = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 500 ")
    assert target.connections == 0
    (error,) = [line for line in engines.lines() if line["level"] == "ERROR"]
    assert error["msg"] == "Request buffer failed" and "No such file" in error["error"]
    # A body that fits in memory needs no file, and other clients are served.
    reader, writer = await connect(engine)
    writer.write(post_head(5) + b"small")
    head, answer = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["length"] == 5


async def test_a_drain_waits_for_a_request_being_buffered(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    pool = engine.service.pool
    body = os.urandom(512 * KiB)
    reader, writer = await connect(engine)
    writer.write(post_head(len(body)) + body[: 100 * KiB])
    await until(lambda: spilled(spill_dir))
    assert pool.in_flight == 1, "a request being buffered is in flight on its target"
    drain = asyncio.ensure_future(pool.drain(10))
    await asyncio.sleep(0)
    assert not drain.done()
    writer.write(body[100 * KiB :])
    head, answer = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["length"] == len(body)
    assert await asyncio.wait_for(drain, 5) == 0, "it finished within the drain: nothing was cut"


async def test_a_drain_cuts_a_request_still_being_buffered_with_504(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB))
    reader, writer = await connect(engine)
    writer.write(post_head(MiB) + os.urandom(100 * KiB))
    await until(lambda: spilled(spill_dir))
    assert await engine.service.pool.drain(0.2) == 1
    head, _ = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 504 ")
    assert target.connections == 0
    await until(lambda: not spilled(spill_dir))


async def test_pipelined_requests_are_each_buffered_and_answered_in_order(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, memory=16 * KiB))
    bodies = [os.urandom(100 * KiB), os.urandom(50 * KiB), b""]
    reader, writer = await connect(engine)
    writer.write(post_head(len(bodies[0])) + bodies[0] + post_head(None) + chunked(bodies[1]) + post_head(0))
    answers = [json.loads((await read_response(reader))[1]) for _ in bodies]
    writer.close()
    assert [a["sha256"] for a in answers] == [hashlib.sha256(b).hexdigest() for b in bodies]


# -- HTTP/2 and TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certificate(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    leaf = ca.issue_cert("app.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-over-tls"])
async def test_an_http2_upload_larger_than_its_windows_is_buffered_whole(
    engines, target, spill_dir, ca, certificate, tls
):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB), tls=certificate)
    port, context = (engine.tls_port, client_context(ca)) if tls else (engine.port, None)
    client = await H2Client.connect(port, "app.test", context)
    body = os.urandom(3 * MiB)  # beyond the stream's 256 KiB and the connection's 1 MiB window
    try:
        stream = client.start("/upload", method="POST", end=False)  # no content-length: chunked upstream
        await asyncio.wait_for(client.send_body(stream, body), 10)
        response = await client.response(stream)
    finally:
        await client.close()
    got = json.loads(response.body)
    assert response.status == 200 and got["sha256"] == hashlib.sha256(body).hexdigest()
    assert Received(got["head"].encode()).header(b"content-length") == b"%d" % len(body)
    await until(lambda: not spilled(spill_dir))


async def test_an_http2_upload_over_the_limit_gets_413_on_its_stream(engines, target, spill_dir):
    policy = BufferPolicy(requests=True, memory=64 * KiB, max_request_body=MiB)
    engine = await engines.start(policy, pages={413: PAGE_413})
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        stream = client.start("/upload", method="POST", end=False)
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # answered: the proxy resets it
            await asyncio.wait_for(client.send_body(stream, os.urandom(2 * MiB)), 10)
        response = await client.response(stream)
        again = await client.get("/after")  # the connection goes on
    finally:
        await client.close()
    assert response.status == 413 and response.body == PAGE_413
    assert again.status == 200
    assert target.connections == 1 and len(target.requests) == 1
    await until(lambda: not spilled(spill_dir))


async def test_an_https_upload_is_buffered(engines, target, spill_dir, ca, certificate):
    engine = await engines.start(BufferPolicy(requests=True, memory=64 * KiB), tls=certificate)
    body = os.urandom(2 * MiB)
    context = client_context(ca)
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", engine.tls_port, ssl=context, server_hostname="app.test"
    )
    writer.write(post_head(None) + chunked(body))
    head, answer = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["sha256"] == sha(body)


async def test_an_https_response_is_buffered_and_replayed_from_its_file(
    engines, target, spill_dir, ca, certificate
):
    engine = await engines.start(BufferPolicy(responses=True, memory=64 * KiB), tls=certificate)
    body = os.urandom(2 * MiB)

    async def send(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    target.respond = send
    context = client_context(ca)
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", engine.tls_port, ssl=context, server_hostname="app.test"
    )
    writer.write(b"GET /file HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head, received = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and received == body
    await until(lambda: not spilled(spill_dir))


# -- the proxy's own process: memory, and a disk that is full ---------------------------------


class EngineProcess:
    """tests/buffer_server.py as a process of its own."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> str:
        out, _ = self.process.communicate(timeout=20)  # closes its stdin: it stops
        return out.decode()


def start_process(target: str, env: dict[str, str], *flags: str, file_limit: int = 0) -> EngineProcess:
    def limit() -> None:
        if file_limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.buffer_server", "--target", target, *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        preexec_fn=limit,
    )
    ports = json.loads(process.stdout.readline())
    return EngineProcess(process, ports["port"])


@pytest.fixture
def process_env(spill_dir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(spill_dir)}


async def test_a_50_mib_upload_reaches_the_target_whole_in_little_memory(target, spill_dir, process_env):
    engine = start_process(target.address, process_env, "--buffer-requests", "--memory", str(MiB))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(post_head(5) + b"warm!")  # the first request's imports and allocations
        await read_response(reader)
        Path(f"/proc/{engine.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = engine.status("VmHWM")
        digest = hashlib.sha256()
        block = os.urandom(MiB)
        writer.write(post_head(50 * MiB))
        for _ in range(50):
            digest.update(block)
            writer.write(block)
            await writer.drain()
        head, answer = await read_response(reader, timeout=60)
        peak = engine.status("VmHWM")
        writer.close()
    finally:
        engine.stop()
    got = json.loads(answer)
    assert head.startswith(b"HTTP/1.1 200 ") and (got["length"], got["sha256"]) == (
        50 * MiB,
        digest.hexdigest(),
    )
    print(f"RSS grew by {(peak - before) / 1024:.1f} MiB")
    assert (peak - before) * KiB < 8 * MiB, f"RSS grew by {(peak - before) / 1024:.1f} MiB"
    assert not spilled(spill_dir)


async def test_a_full_disk_fails_that_request_with_500_and_the_proxy_serves_on(
    target, spill_dir, process_env
):
    # RLIMIT_FSIZE: the proxy's writes past 1 MiB fail with EFBIG, as on a full disk.
    engine = start_process(
        target.address, process_env, "--buffer-requests", "--memory", str(64 * KiB), file_limit=MiB
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(post_head(3 * MiB) + os.urandom(3 * MiB))
        head, _ = await read_response(reader)
        writer.close()
        await until(lambda: not spilled(spill_dir))
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        body = os.urandom(512 * KiB)  # fits under the limit
        writer.write(post_head(len(body)) + body)
        after, answer = await read_response(reader)
        writer.close()
    finally:
        log = engine.stop()
    assert head.startswith(b"HTTP/1.1 500 ")
    assert after.startswith(b"HTTP/1.1 200 ") and json.loads(answer)["sha256"] == sha(body)
    errors = [json.loads(line) for line in log.splitlines() if '"level":"ERROR"' in line.replace(" ", "")]
    assert len(errors) == 1 and "too large" in errors[0]["error"].lower()
    assert len(target.requests) == 1


async def test_a_full_disk_while_buffering_a_response_gets_500_and_the_proxy_serves_on(
    target, spill_dir, process_env
):
    async def sized(target, got, reader, writer) -> None:
        size = 3 * MiB if got.head.startswith(b"GET /large") else 100 * KiB
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)

    target.respond = sized
    engine = start_process(
        target.address, process_env, "--buffer-responses", "--memory", str(64 * KiB), file_limit=MiB
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(b"GET /large HTTP/1.1\r\nHost: a\r\n\r\n")
        refused, _ = await read_response(reader)
        writer.close()
        await until(lambda: not spilled(spill_dir))
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = await read_response(reader)
        writer.close()
    finally:
        log = engine.stop()
    assert refused.startswith(b"HTTP/1.1 500 ")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"x" * 100 * KiB
    assert '"msg": "Response buffer failed"' in log


# -- response buffering -----------------------------------------------------------------------


class Held:
    """A target response sent in two parts, the second when the test says so."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.sent_first = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, target, got, reader, writer) -> None:
        writer.write(self.first)
        await writer.drain()
        self.sent_first.set()
        await self.release.wait()
        writer.write(self.rest)


async def test_a_buffered_response_reaches_the_client_only_when_whole(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(responses=True, memory=64 * KiB))
    body = os.urandom(2 * MiB)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-From: target\r\n\r\n" % len(body)
    held = Held(head + body[:MiB], body[MiB:])
    target.respond = held
    reader, writer = await connect(engine)
    writer.write(b"GET /file HTTP/1.1\r\nHost: app.test\r\n\r\n")
    await held.sent_first.wait()
    await until(lambda: spilled(spill_dir) and spilled(spill_dir)[0].stat().st_size > MiB // 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)  # nothing of it before it is whole
    held.release.set()
    response_head, response_body = await read_response(reader)
    writer.close()
    assert response_head.startswith(b"HTTP/1.1 200 ") and b"X-From: target" in response_head
    assert response_body == body
    await until(lambda: not spilled(spill_dir))
    (line,) = [line for line in engines.lines() if line["msg"] == "Request"]
    assert line["status"] == 200 and line["resp_content_length"] == len(body)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_response_over_the_limit_gets_500_and_the_target_connection_is_cut(
    engines, target, spill_dir, declared
):
    policy = BufferPolicy(responses=True, memory=64 * KiB, max_response_body=MiB)
    engine = await engines.start(policy)
    body = os.urandom(2 * MiB)
    if declared:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    else:
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)

    async def send(target, got, reader, writer) -> None:
        writer.write(response)

    target.respond = send
    reader, writer = await connect(engine)
    writer.write(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head, _ = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 500 ")
    await asyncio.wait_for(target.closed.wait(), 5)  # the proxy let go of the target connection
    await until(lambda: not spilled(spill_dir))


async def test_an_event_stream_is_not_buffered(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(responses=True, memory=64 * KiB))
    events = [b"data: one\n\n", b"data: two\n\n"]
    read_first = asyncio.Event()

    async def stream(target, got, reader, writer) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n%s\r\n" % (len(events[0]), events[0]))
        await read_first.wait()  # the client has the first event before the second exists
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(events[1]), events[1]))

    target.respond = stream
    reader, writer = await connect(engine)
    writer.write(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    read_first.set()
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and first.endswith(events[0]) and events[1] in rest


@pytest.mark.parametrize(
    ("request_line", "response", "expected"),
    [
        (b"HEAD /file", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"HTTP/1.1 200 "),
        (b"GET /none", b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 204 "),
        (b"GET /same", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n', b"HTTP/1.1 304 "),
    ],
    ids=["HEAD", "204", "304"],
)
async def test_responses_without_a_body_are_buffered_and_the_connection_goes_on(
    engines, target, request_line, response, expected
):
    engine = await engines.start(BufferPolicy(responses=True))

    async def answer(target, got, reader, writer) -> None:
        writer.write(
            response
            if not got.head.startswith(b"GET /next")
            else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )

    target.respond = answer
    reader, writer = await connect(engine)
    writer.write(request_line + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
    after, body = await read_response(reader)
    writer.close()
    assert head.startswith(expected) and after.startswith(b"HTTP/1.1 200 ") and body == b"ok"


async def test_interim_responses_pass_at_once_when_responses_are_buffered(engines, target):
    engine = await engines.start(BufferPolicy(responses=True))
    target.read_body = False

    async def continue_first(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await read_body(reader, got)  # the client sends it only after the 100
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        writer.write(
            b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(got.sha256), got.sha256.encode())
        )

    target.respond = continue_first
    reader, writer = await connect(engine)
    writer.write(post_head(5, extra=b"Expect: 100-continue\r\n"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    hints = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    head, body = await read_response(reader)
    writer.close()
    assert hints.startswith(b"HTTP/1.1 103 ") and head.startswith(b"HTTP/1.1 201 ")
    assert body == hashlib.sha256(b"hello").hexdigest().encode()


async def test_a_response_cut_midway_gets_502_when_buffered(engines, target):
    engine = await engines.start(BufferPolicy(responses=True))

    async def cut(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    target.respond = cut
    reader, writer = await connect(engine)
    writer.write(b"GET /cut HTTP/1.1\r\nHost: app.test\r\n\r\n")
    head, _ = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 502 "), "nothing of it was sent: the client gets an answer, not a cut"


async def test_both_buffers_together_over_http2(engines, target, spill_dir):
    engine = await engines.start(BufferPolicy(requests=True, responses=True, memory=64 * KiB))
    body = os.urandom(2 * MiB)

    async def echo(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body[::-1]))

    target.respond = echo
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        stream = client.start(
            "/upload", method="POST", headers=[("content-length", str(len(body)))], end=False
        )
        await asyncio.wait_for(client.send_body(stream, body), 10)
        response = await client.response(stream)
    finally:
        await client.close()
    assert response.status == 200 and response.body == body[::-1]
    assert target.requests[0].sha256 == hashlib.sha256(body).hexdigest()
    await until(lambda: not spilled(spill_dir))


async def test_an_event_stream_over_http2_is_not_buffered(engines, target):
    engine = await engines.start(BufferPolicy(responses=True))
    read_first = asyncio.Event()

    async def stream(target, got, reader, writer) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 22\r\n\r\ndata: one\n\n"
        )
        await read_first.wait()
        writer.write(b"data: two\n\n")

    target.respond = stream
    client = await H2Client.connect(engine.port, "app.test", None)
    try:
        stream_id = client.start("/events")
        state = client.streams[stream_id]
        await until(lambda: bytes(state.body) == b"data: one\n\n", timeout=5)
        read_first.set()
        response = await client.response(stream_id)
    finally:
        await client.close()
    assert response.body == b"data: one\n\ndata: two\n\n"


async def test_a_client_that_does_not_read_a_big_buffered_response_costs_little_memory(
    target, spill_dir, process_env
):
    body = os.urandom(30 * MiB)

    async def big(target, got, reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    target.respond = big
    engine = start_process(target.address, process_env, "--buffer-responses", "--memory", str(MiB))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port, limit=64 * KiB)
        writer.transport.set_write_buffer_limits(0)
        Path(f"/proc/{engine.pid}/clear_refs").write_text("5")
        before = engine.status("VmHWM")
        writer.write(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)  # whole now: the replay began
        await until(lambda: not spilled(spill_dir))  # its name goes as the replay starts
        await asyncio.sleep(0.5)  # the client takes nothing for a while: the proxy must not read ahead
        held = engine.status("VmRSS")
        received = await asyncio.wait_for(reader.readexactly(len(body)), 60)
        peak = engine.status("VmHWM")
        writer.close()
    finally:
        engine.stop()
    assert head.startswith(b"HTTP/1.1 200 ") and received == body
    print(f"RSS: {before} KiB before, {held} while the client reads nothing, peak {peak}")
    assert (held - before) * KiB < 8 * MiB and (peak - before) * KiB < 8 * MiB, (before, held, peak)


# -- through `pyproxy run` and `pyproxy deploy --buffer-*` --------------------------------------


async def test_pyproxy_deploy_buffers_requests_within_its_limit(make_proxy, target, spill_dir, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "413.html").write_text("<h1>too big for web</h1>")
    proxy = await make_proxy()  # after $TMPDIR is set: it spills there
    result = await proxy.deploy(
        "web",
        target.address,
        args=(
            "--buffer-requests",
            "--buffer-memory=65536",
            "--max-request-body=2097152",
            f"--error-pages={pages}",
        ),
    )
    assert result.status == 0, result.stderr
    body = os.urandom(MiB)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(post_head(None) + chunked(body[: 512 * KiB])[:-5])
    await until(lambda: spilled(spill_dir))
    assert not target.requests, "nothing reaches the target before the body is whole"
    writer.write(chunked(body[512 * KiB :]))
    head, answer = await read_response(reader)
    got = json.loads(answer)
    assert head.startswith(b"HTTP/1.1 200 ") and got["sha256"] == sha(body)
    assert Received(got["head"].encode("latin-1")).header(b"content-length") == b"%d" % len(body)
    writer.write(post_head(3 * MiB) + os.urandom(3 * MiB))
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 413 ") and b"too big for web" in response
    assert len(target.requests) == 1
    await until(lambda: not spilled(spill_dir))


async def test_pyproxy_deploy_buffers_responses_within_its_limit(make_proxy, target, spill_dir):
    sizes = {b"/small": 100 * KiB, b"/large": 3 * MiB}

    async def sized(target, got, reader, writer) -> None:
        size = sizes[got.head.split(b" ")[1]]
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * size))

    target.respond = sized
    proxy = await make_proxy()
    args = ("--buffer-responses", "--buffer-memory=65536", "--max-response-body=1048576")
    result = await proxy.deploy("web", target.address, args=args)
    assert result.status == 0, result.stderr
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
    head, body = await read_response(reader)
    writer.write(b"GET /large HTTP/1.1\r\nHost: a\r\n\r\n")
    refused, _ = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"x" * sizes[b"/small"]
    assert refused.startswith(b"HTTP/1.1 500 ")
    await until(lambda: not spilled(spill_dir))
    line = await proxy.wait_for_log("Request", path="/large")
    assert line["status"] == 500


async def test_websockets_bypass_both_buffers(spill_dir, proxy, upstreams):
    result = await proxy.deploy(
        "web", upstreams[0].address, args=("--buffer-requests", "--buffer-responses", "--buffer-memory=1024")
    )
    assert result.status == 0, result.stderr
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        for word in ("one", "two"):
            await ws.send_str(word)
            assert (await asyncio.wait_for(ws.receive(), 5)).data == f"blue: {word}"
    assert not spilled(spill_dir)


# -- found in review --------------------------------------------------------------------------


async def test_a_spooled_body_whose_target_is_down_leaves_no_file(tmp_path, spill_dir):
    with socket.socket() as probe:  # a port nothing listens on: the target is down
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    log = JsonLog(fd=os.open(tmp_path / "engine.log", os.O_WRONLY | os.O_CREAT))
    engine = await start_engine(down, BufferPolicy(requests=True, memory=1024), log)
    try:
        for _ in range(3):
            reader, writer = await connect(engine)
            writer.write(post_head(200 * KiB) + os.urandom(200 * KiB))
            head, _ = await read_response(reader)
            writer.close()
            assert head.startswith(b"HTTP/1.1 502 ")
        client = await H2Client.connect(engine.port, "app.test", None)
        stream = client.start("/upload", "POST", [("content-length", str(200 * KiB))], end=False)
        await client.send_body(stream, os.urandom(200 * KiB))
        assert (await client.response(stream)).status == 502
        await client.close()
        await until(lambda: not spilled(spill_dir))
    finally:
        await engine.stop()
        os.close(log.fd)


async def test_an_http2_upload_held_by_a_paused_service_reaches_the_target_whole(
    make_proxy, target, spill_dir
):
    proxy = await make_proxy("--h2c")
    assert (await proxy.deploy("web", target.address, args=("--buffer-requests",))).status == 0
    assert (await proxy.cli("pause", "web")).status == 0
    body = os.urandom(3000)
    client = await H2Client.connect(proxy.port, "app.test", None)
    try:
        stream = client.start("/upload", "POST", [("content-length", "3000")], end=False)
        client.conn.send_data(stream, body[:1000])
        client.flush()
        for _ in range(100):  # until the proxy holds it (bounded: about 10 s)
            if "1 held" in (await proxy.cli("list")).stdout:
                break
            await asyncio.sleep(0.05)
        assert (await proxy.cli("resume", "web")).status == 0
        client.conn.send_data(stream, body[1000:], end_stream=True)
        client.flush()
        response = await client.response(stream)
    finally:
        await client.close()
    assert response.status == 200
    assert json.loads(response.body)["sha256"] == sha(body)


async def test_head_and_304_of_a_large_body_are_not_refused_by_the_response_limit(engines, target):
    async def large(target: RawTarget, got: Received, reader, writer: asyncio.StreamWriter) -> None:
        status = b"304 Not Modified" if got.head.startswith(b"GET") else b"200 OK"
        writer.write(b'HTTP/1.1 %s\r\nContent-Length: 5000000\r\nETag: "v1"\r\n\r\n' % status)

    target.respond = large
    engine = await engines.start(BufferPolicy(responses=True, max_response_body=1000))
    for request in (
        b"HEAD /big HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b'GET /big HTTP/1.1\r\nHost: app.test\r\nIf-None-Match: "v1"\r\n\r\n',
    ):
        reader, writer = await connect(engine)
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert not line.startswith(b"HTTP/1.1 500"), (request, line)
        assert line.split()[1] in (b"200", b"304")
