"""HTTP/2 clients that misbehave on purpose, against a real `pyproxy run` over TLS: each gets the answer
RFC 9113 names (or is held back by TCP), holds bounded memory, and the proxy's other connections go on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from tests.h2frames import PREFACE, Closed, H2RawClient, raw_frame
from tests.test_tls import client_context, deploy_tls

HOST = "h2.test"
DATA_TYPE = 0x0
MAX_CONCURRENT_STREAMS = 100  # what pyproxy announces

Connect = Callable[..., Awaitable[H2RawClient]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def connect(proxy, upstreams, ca) -> AsyncIterator[Connect]:
    await deploy_tls(proxy, ca, upstreams[0].address, HOST)
    clients: list[H2RawClient] = []

    async def open_connection(*, handshake: bool = True) -> H2RawClient:
        client = await H2RawClient.connect(proxy.https_port, HOST, client_context(ca), handshake=handshake)
        clients.append(client)
        return client

    yield open_connection
    for client in clients:
        await client.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def served(client: H2RawClient, stream_id: int, path: str = "/") -> None:
    """A GET on `stream_id` of an established connection is answered 200."""
    client.send_headers(stream_id, client.request_headers(path))
    headers, _ = await client.read_response(stream_id)
    assert (":status", "200") in headers, client.summary()


def huge_frame_header() -> bytes:
    """The 9-byte header of a DATA frame on stream 1 declaring 16 MiB - 1 (the most 24 bits hold)."""
    return (2**24 - 1).to_bytes(3, "big") + raw_frame(DATA_TYPE, 0, 1)[3:9]


@pytest.mark.parametrize("acknowledged", [True, False], ids=["after-settings-ack", "before-settings-ack"])
async def test_a_frame_declared_larger_than_max_frame_size_is_refused_at_its_header(
    connect: Connect, acknowledged: bool
):
    """Only the 9 header bytes are sent: the GOAWAY cannot wait for a payload that never comes."""
    bystander = await connect()
    client = await connect(handshake=acknowledged)
    oversized = huge_frame_header()
    if not acknowledged:  # our SETTINGS, then at once the frame: the server's SETTINGS are not ACKed yet
        client.send_raw(PREFACE + SettingsFrame(0).serialize())
    else:
        client.send_headers(1, client.request_headers("/upload", "POST"), end_stream=False)
    client.send_raw(oversized)
    frame = await client.wait_for(GoAwayFrame)
    assert isinstance(frame, GoAwayFrame), client.summary()
    assert frame.error_code == ErrorCodes.FRAME_SIZE_ERROR, client.summary()
    assert await client.wait_closed(), client.summary()
    await served(bystander, 1)


async def test_many_connections_declaring_huge_frames_hold_no_payload(connect: Connect, proxy):
    """Each sends 4 MiB into a frame declared at 16 MiB: h2 alone keeps it all until the frame is whole."""
    before = rss_kib(proxy.process.pid)
    clients = [await connect() for _ in range(20)]
    for client in clients:
        client.send_raw(huge_frame_header())
        client.send_raw(b"x" * 4 * 2**20)
    for client in clients:
        frame = await client.wait_for(GoAwayFrame)
        assert isinstance(frame, GoAwayFrame) and frame.error_code == ErrorCodes.FRAME_SIZE_ERROR
    assert rss_kib(proxy.process.pid) - before < 30 * 1024, "80 MiB of payload must not have been kept"


async def test_a_request_sent_one_byte_at_a_time_is_answered(connect: Connect):
    client = await connect(handshake=False)
    block = client.headers_block(client.request_headers("/slow-client"))
    request = PREFACE + SettingsFrame(0).serialize()
    request += HeadersFrame(1, block, flags=["END_STREAM", "END_HEADERS"]).serialize()
    for byte in request:
        client.send_raw(bytes([byte]))
        await client.writer.drain()
    headers, _ = await client.read_response(1)
    assert (":status", "200") in headers, client.summary()


async def test_a_ping_and_settings_flood_is_answered_and_others_go_on(connect: Connect):
    """50,000 control frames in one burst, the client reading nothing meanwhile: another connection is
    served while the proxy works through them, and then every PING gets its ACK, the connection intact
    (a client that keeps not reading is held back by TCP: pyproxy stops reading while its writes wait)."""
    bystander = await connect()
    flooder = await connect()
    frames = 50_000
    flooder.send_raw(
        (PingFrame(0, opaque_data=b"flooding").serialize() * 9 + SettingsFrame(0).serialize())
        * (frames // 10)
    )
    for stream_id in range(1, 20, 2):
        await served(bystander, stream_id)
    pings = settings_acks = 0
    while pings < frames * 9 // 10 or settings_acks < frames // 10:
        frame = await flooder.next_frame()
        assert not isinstance(frame, Closed | GoAwayFrame), flooder.summary()
        pings += isinstance(frame, PingFrame) and "ACK" in frame.flags
        settings_acks += isinstance(frame, SettingsFrame) and "ACK" in frame.flags
    flooder.received.clear()  # 50,000 frames: not for a failure message
    await served(flooder, 1)


async def test_a_stream_past_the_concurrency_limit_is_refused_and_the_others_go_on(connect: Connect):
    bystander = await connect()
    client = await connect()
    assert client.server_settings.get(0x3) == MAX_CONCURRENT_STREAMS
    upload = client.request_headers("/echo", "POST")  # the target waits for bodies that never end
    for n in range(MAX_CONCURRENT_STREAMS):  # each stays open: no END_STREAM
        client.send_headers(1 + 2 * n, upload, end_stream=False)
    extra = 1 + 2 * MAX_CONCURRENT_STREAMS
    client.send_headers(extra, client.request_headers("/"))
    frame = await client.wait_for(
        Frame,
        lambda f: isinstance(f, GoAwayFrame) or (isinstance(f, RstStreamFrame) and f.stream_id == extra),
    )
    assert isinstance(frame, RstStreamFrame | GoAwayFrame), client.summary()
    assert frame.error_code in (ErrorCodes.REFUSED_STREAM, ErrorCodes.PROTOCOL_ERROR), client.summary()
    await served(bystander, 1)
