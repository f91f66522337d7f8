"""HTTP/2 over TLS: real clients (curl, h2load, an h2-library client) through the proxy to HTTP/1.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from h2.errors import ErrorCodes

from proxy.http.http2 import CONNECTION_WINDOW, MAX_RESETS
from tests.conftest import ProxyProcess, raw_request
from tests.h2client import H2Client
from tests.test_tls import client_context, deploy_tls

HOST = "app.test"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def secure(proxy: ProxyProcess, upstreams, ca) -> ProxyProcess:
    await deploy_tls(proxy, ca, upstreams[0].address, HOST)
    return proxy


@pytest.fixture
async def client(secure: ProxyProcess, ca) -> AsyncIterator[H2Client]:
    connection = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    yield connection
    await connection.close()


class StreamingTarget:
    """A target whose big responses and slow body reads show whether the proxy holds data back."""

    def __init__(self) -> None:
        self.written = 0
        self.release_upload = asyncio.Event()
        self.upload_started = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> StreamingTarget:
        app = web.Application(client_max_size=1024**3)
        app.add_routes([web.get("/up", self.up), web.get("/big", self.big), web.post("/upload", self.upload)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def up(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def big(self, request: web.Request) -> web.StreamResponse:
        total = int(request.query["mib"]) * MiB
        response = web.StreamResponse(headers={"Content-Length": str(total)})
        await response.prepare(request)
        chunk = bytes(range(256)) * 256  # 64 KiB
        while self.written < total:
            await response.write(chunk)
            self.written += len(chunk)
        return response

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        first = await request.content.read(64 * 1024)
        digest.update(first)
        size += len(first)
        self.upload_started.set()
        await self.release_upload.wait()
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def streaming_target() -> AsyncIterator[StreamingTarget]:
    target = await StreamingTarget().start()
    yield target
    await target.stop()


async def settled(read, timeout: float = 15) -> int:
    """The value `read()` returns once it has stopped changing for half a second.

    Back-pressure shows as progress that stops: there is no event for "nothing more happened".
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = read()
    while loop.time() < deadline:
        await asyncio.sleep(0.5)
        if read() == value:
            return value
        value = read()
    raise AssertionError("the value kept changing")


def curl_http2(proxy: ProxyProcess, ca: trustme.CA, path: str, *args: str) -> subprocess.CompletedProcess:
    ca_file = proxy.workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return subprocess.run(
        [
            "curl", "-sS", "--http2", "--cacert", str(ca_file),
            "--resolve", f"{HOST}:{proxy.https_port}:127.0.0.1",
            "-w", "\n%{http_version} %{http_code}", *args,
            f"https://{HOST}:{proxy.https_port}{path}",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_curl_gets_the_targets_response_over_http2(secure, ca):
    result = await asyncio.to_thread(curl_http2, secure, ca, "/hello?x=1", "-H", "Cookie: a=1")
    body, _, version = result.stdout.rpartition("\n")
    assert version == "2 200", result.stderr
    answer = json.loads(body)
    assert answer["path"] == "/hello?x=1"
    assert answer["headers"]["X-Forwarded-Proto"] == "https"
    line = await secure.wait_for_log("Request", path="/hello")
    assert line["proto"] == "HTTP/2.0" and line["status"] == 200


async def test_h2load_requests_all_succeed(secure):
    if shutil.which("h2load") is None:
        pytest.fail("h2load is missing: scripts/test installs it (Debian package nghttp2-client)")
    command = [
        "h2load", "-n", "400", "-c", "4", "-m", "20",
        f"--connect-to=127.0.0.1:{secure.https_port}", f"https://{HOST}:{secure.https_port}/",
    ]  # fmt: skip
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert "Application protocol: h2" in result.stdout
    assert "400 succeeded, 0 failed, 0 errored" in result.stdout, result.stdout
    assert "status codes: 400 2xx" in result.stdout


async def test_many_streams_on_one_connection_get_their_own_responses(client):
    stream_ids = [client.start(f"/stream/{n}") for n in range(60)]
    responses = await asyncio.gather(*(client.response(sid) for sid in stream_ids))
    for n, response in enumerate(responses):
        assert response.status == 200
        assert json.loads(response.body)["path"] == f"/stream/{n}"


async def test_request_is_forwarded_as_http11_with_merged_cookies(client):
    response = await client.get(
        "/headers", [("cookie", "a=1"), ("cookie", "b=2"), ("x-custom", "yes"), ("te", "trailers")]
    )
    headers = json.loads(response.body)["headers"]
    assert headers["Cookie"] == "a=1; b=2"
    assert headers["Host"] == HOST
    assert headers["x-custom"] == "yes"
    assert "te" not in {name.lower() for name in headers}
    assert headers["X-Forwarded-Proto"] == "https" and headers["X-Request-ID"]
    assert b"connection" not in response.headers and b"transfer-encoding" not in response.headers


async def test_body_of_unknown_length_reaches_the_target(client):
    body = bytes(range(256)) * 1000
    stream_id = client.start("/echo", method="POST", end=False)
    await client.send_body(stream_id, body)
    response = await client.response(stream_id)
    assert response.status == 200 and response.body == body


class RawTarget:
    """A target that parses chunked bodies itself, to see exactly what framing the proxy sends."""

    def __init__(self) -> None:
        self.request_lines: list[bytes] = []
        self.bodies: list[bytes] = []
        self.address = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> RawTarget:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.request_lines.append(line)
                if not line.split(b" ", 1)[0].isalpha():
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                if b"transfer-encoding: chunked" in head.lower():
                    body = b""
                    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                        body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readexactly(2)
                    self.bodies.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_chunked_body_ends_once_when_the_client_ends_with_an_empty_data_frame(proxy, ca):
    target = await RawTarget().start()
    await deploy_tls(proxy, ca, target.address, HOST)
    client = await H2Client.connect(proxy.https_port, HOST, client_context(ca))
    try:
        stream_id = client.start("/upload", method="POST", end=False)
        await client.send_body(stream_id, b"x" * 1000)  # then END_STREAM on an empty DATA frame
        assert (await client.response(stream_id)).status == 200
        # A second request on the target connection: anything sent after the body's end came before it.
        assert (await client.get("/after")).status == 200
        methods = [line.split(b" ", 1)[0] for line in target.request_lines]
        assert methods[-2:] == [b"POST", b"GET"], target.request_lines
        assert target.bodies == [b"x" * 1000]
    finally:
        await client.close()
        target.server.close()


async def test_errors_are_answered_on_their_stream_and_the_connection_goes_on(client):
    unknown = await client.get("/", [])  # warm: a normal request works
    assert unknown.status == 200
    bad_path = await client.response(client.start("/a b"))
    assert bad_path.status == 400
    too_long = await client.response(client.start("/" + "x" * 9000))
    assert too_long.status == 414
    after = await client.get("/after")
    assert after.status == 200


async def test_no_service_for_the_authority_gives_404(secure, ca):
    connection = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    connection.host = "other.test"
    try:
        response = await connection.get("/")
        assert response.status == 404
        assert b"No application" in response.body
    finally:
        await connection.close()


async def test_large_download_is_streamed_as_the_client_reads(proxy, ca, streaming_target):
    await deploy_tls(proxy, ca, streaming_target.address, HOST)
    client = await H2Client.connect(proxy.https_port, HOST, client_context(ca))
    try:
        client.auto_ack = False  # a client that reads nothing
        stream_id = client.start("/big?mib=96")
        held = await settled(lambda: streaming_target.written)
        assert held < 40 * MiB, f"the proxy read {held} bytes of a response its client is not reading"
        assert len(client.streams[stream_id].body) <= 65535, "sent beyond the client's window"
        client.auto_ack = True
        client.open_window(stream_id)
        client.conn.increment_flow_control_window(16 * MiB)
        client.conn.increment_flow_control_window(16 * MiB, stream_id)
        client.flush()
        response = await client.response(stream_id, timeout=60)
        assert len(response.body) == 96 * MiB
        assert response.body[:65536] == bytes(range(256)) * 256
    finally:
        await client.close()


async def test_large_upload_waits_for_the_target_to_read(proxy, ca, streaming_target):
    await deploy_tls(proxy, ca, streaming_target.address, HOST)
    client = await H2Client.connect(proxy.https_port, HOST, client_context(ca))
    body = hashlib.sha256(b"seed").digest() * (96 * MiB // 32)
    sent = 0
    original = client.conn.send_data

    def counting_send(stream_id: int, data: bytes, **kwargs) -> None:
        nonlocal sent
        sent += len(data)
        original(stream_id, data, **kwargs)

    client.conn.send_data = counting_send
    try:
        stream_id = client.start("/upload", method="POST", end=False)
        upload = asyncio.get_running_loop().create_task(client.send_body(stream_id, body))
        await asyncio.wait_for(streaming_target.upload_started.wait(), 10)
        held = await settled(lambda: sent)
        assert held < 40 * MiB, f"the proxy took {held} bytes of an upload its target is not reading"
        streaming_target.release_upload.set()
        await asyncio.wait_for(upload, 60)
        response = await client.response(stream_id, timeout=60)
        assert json.loads(response.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    finally:
        await client.close()


async def test_shutdown_sends_goaway_and_lets_streams_finish(secure, upstreams, ca):
    idle = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    try:
        assert (await idle.get("/warm")).status == 200
        # curl, not the h2 library, for the stream in flight: h2 treats a connection as
        # closed once it has seen a GOAWAY, so it cannot read the rest of the response.
        slow = asyncio.get_running_loop().create_task(asyncio.to_thread(curl_http2, secure, ca, "/slow?s=1"))
        await asyncio.wait_for(upstreams[0].started.wait(), 10)
        secure.process.send_signal(15)
        await asyncio.wait_for(idle.closed.wait(), 10)
        assert idle.goaway is not None and idle.goaway.error_code == ErrorCodes.NO_ERROR
        result = await slow
        assert result.stdout == "slow from blue\n2 200", result.stderr
        assert await asyncio.wait_for(secure.process.wait(), 15) == 0
    finally:
        await idle.close()


async def test_rapid_reset_flood_closes_only_that_connection(secure, ca):
    flooder = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    bystander = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    request = [(":method", "GET"), (":scheme", "https"), (":authority", HOST), (":path", "/flood")]
    try:
        for _ in range(MAX_RESETS * 5):
            stream_id = flooder.conn.get_next_available_stream_id()
            flooder.conn.send_headers(stream_id, request, end_stream=True)
            flooder.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        flooder.flush()  # one write: the proxy reads the flood in a few large batches
        await asyncio.wait_for(flooder.closed.wait(), 10)
        assert flooder.goaway is not None and flooder.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert (await bystander.get("/still-here")).status == 200
        await secure.wait_for_log("Request", path="/still-here")
        started = [line for line in secure.logs("Request") if line["path"] == "/flood"]
        assert len(started) <= MAX_RESETS + 1, "streams after the limit must not reach the target"
    finally:
        await flooder.close()
        await bystander.close()


async def test_upload_window_is_given_back_when_streams_fail(secure, upstreams, ca):
    await upstreams[0].stop()  # connects are refused from now on: every request gets 502
    client = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    try:
        for _ in range(8):  # 8 x 200 KB is more than the connection's 1 MiB window
            stream_id = client.start("/upload", method="POST", end=False)
            size = min(200_000, client.conn.local_flow_control_window(stream_id))
            for start in range(0, size, 16384):
                client.conn.send_data(stream_id, b"x" * min(16384, size - start))
            client.flush()
            await asyncio.wait_for(client.streams[stream_id].done.wait(), 10)
            assert client.streams[stream_id].status == 502

        # h2 sends a WINDOW_UPDATE once enough is owed, so the last bytes may stay owed: with held
        # bytes leaking, though, the window would be near 0 after 8 x 200 KB.
        async def window_back() -> None:
            while client.conn.outbound_flow_control_window < CONNECTION_WINDOW // 2:
                client.window_opened.clear()
                await client.window_opened.wait()

        await asyncio.wait_for(window_back(), 10)
    finally:
        await client.close()


async def test_a_stalled_request_body_is_answered_408(make_proxy, upstreams, ca):
    proxy = await make_proxy("--header-timeout=500ms")
    await deploy_tls(proxy, ca, upstreams[0].address, HOST)
    client = await H2Client.connect(proxy.https_port, HOST, client_context(ca))
    try:
        stream_id = client.start("/echo", method="POST", end=False)
        client.conn.send_data(stream_id, b"the start of a body that never ends")
        client.flush()
        await asyncio.wait_for(client.streams[stream_id].done.wait(), 10)
        assert client.streams[stream_id].status == 408
    finally:
        await client.close()


async def test_huge_header_block_is_refused_and_others_go_on(secure, ca):
    attacker = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    bystander = await H2Client.connect(secure.https_port, HOST, client_context(ca))
    try:
        stream_id = attacker.start("/", headers=[(f"x-big-{n}", "v" * 4000) for n in range(40)])
        await asyncio.wait_for(attacker.streams[stream_id].done.wait(), 10)
        refused = attacker.goaway is not None or attacker.streams[stream_id].reset_code is not None
        assert refused or attacker.streams[stream_id].status == 431
        assert (await bystander.get("/still-here")).status == 200
    finally:
        await attacker.close()
        await bystander.close()


async def test_http11_clients_still_get_http11(secure, ca):
    result = await asyncio.to_thread(curl_http2, secure, ca, "/", "--http1.1")
    assert result.stdout.endswith("1.1 200"), result.stderr


def test_curl_is_available():
    assert Path(shutil.which("curl") or "").exists(), "curl is needed for the HTTP/2 client tests"


async def test_h2c_serves_cleartext_http2_and_http11_on_the_http_port(make_proxy, upstreams):
    proxy = await make_proxy("--h2c")
    assert (await proxy.deploy("app", upstreams[0].address)).status == 0
    client = await H2Client.connect(proxy.port, "app.test", None)
    try:
        response = await client.get("/h2c")
        answer = json.loads(response.body)
        assert response.status == 200 and answer["path"] == "/h2c"
        assert answer["headers"]["X-Forwarded-Proto"] == "http"
    finally:
        await client.close()
    plain = await raw_request(proxy.port, b"GET /h1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 200") and b"/h1" in plain


async def test_without_h2c_the_http2_preface_is_a_bad_request(proxy, upstreams):
    assert (await proxy.deploy("app", upstreams[0].address)).status == 0
    response = await raw_request(proxy.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")
