"""HTTP/2 conformance (RFC 9113), h2spec style: raw frames over TLS (ALPN h2) to a real `pyproxy run`.

Each test provokes one error the RFC names and asserts the frame and error code it asks for. Where the RFC
says "stream error", a RST_STREAM with the code or a GOAWAY with the same code is accepted (as h2spec does);
where it says "connection error", a GOAWAY with the code is required, and then the connection must close.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.http.http2 import MAX_RESETS
from tests.h2frames import PREFACE, Closed, H2RawClient, Header, error_name, raw_frame
from tests.test_tls import client_context, deploy_tls

HOST = "h2.test"
H2SPEC = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "h2spec"
H2SPEC_CASES = 146
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_WINDOW = 2**31 - 1
DATA_TYPE, PRIORITY_TYPE, SETTINGS_TYPE, PING_TYPE, WINDOW_UPDATE_TYPE = 0x0, 0x2, 0x4, 0x6, 0x8
ACK = 0x1

Connect = Callable[..., Awaitable[H2RawClient]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def connect(proxy, upstreams, ca) -> AsyncIterator[Connect]:
    """Opens h2 connections to a TLS service for HOST (served by the "blue" upstream)."""
    await deploy_tls(proxy, ca, upstreams[0].address, HOST)
    clients: list[H2RawClient] = []

    async def open_connection(*, handshake: bool = True) -> H2RawClient:
        client = await H2RawClient.connect(proxy.https_port, HOST, client_context(ca), handshake=handshake)
        clients.append(client)
        return client

    yield open_connection
    for client in clients:
        await client.close()


@pytest.fixture
async def h2(connect: Connect) -> H2RawClient:
    """An established connection: prefaces exchanged, both SETTINGS acknowledged."""
    return await connect()


def is_error_frame(stream_id: int) -> Callable[[Frame], bool]:
    return lambda frame: (
        isinstance(frame, GoAwayFrame) or (isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id)
    )


async def expect_connection_error(client: H2RawClient, *codes: ErrorCodes) -> None:
    """A GOAWAY with one of `codes` (not a RST_STREAM), then the server closes the connection."""
    expected = " or ".join(code.name for code in codes)
    frame = await client.wait_for(Frame, lambda f: isinstance(f, GoAwayFrame | RstStreamFrame))
    assert isinstance(frame, GoAwayFrame), f"expected GOAWAY {expected}; received: {client.summary()}"
    assert frame.error_code in codes, f"expected GOAWAY {expected}; received: {client.summary()}"
    assert await client.wait_closed(), f"the connection must close after the GOAWAY: {client.summary()}"


async def expect_stream_error(client: H2RawClient, stream_id: int, *codes: ErrorCodes) -> None:
    """A RST_STREAM on `stream_id` with one of `codes`, or a GOAWAY with one of them."""
    expected = " or ".join(code.name for code in codes)
    frame = await client.wait_for(Frame, is_error_frame(stream_id))
    assert not isinstance(frame, Closed), (
        f"expected RST_STREAM/GOAWAY {expected}, the connection closed without either: {client.summary()}"
    )
    assert isinstance(frame, GoAwayFrame | RstStreamFrame)
    assert frame.error_code in codes, (
        f"expected RST_STREAM({stream_id})/GOAWAY {expected}, got {error_name(frame.error_code)}; "
        f"received: {client.summary()}"
    )


async def expect_only_the_stream_reset(client: H2RawClient, stream_id: int) -> None:
    """RFC 9113 8.1.1: a malformed request is a stream error; the connection serves the next stream."""
    frame = await client.wait_for(Frame, is_error_frame(stream_id))
    assert isinstance(frame, RstStreamFrame), f"expected RST_STREAM({stream_id}): {client.summary()}"
    assert frame.error_code == ErrorCodes.PROTOCOL_ERROR, client.summary()
    client.send_headers(stream_id + 2, client.request_headers("/next"))
    headers, _ = await client.read_response(stream_id + 2)
    assert (":status", "200") in headers, client.summary()


def post_headers(client: H2RawClient, path: str = "/echo", *extra: Header) -> list[Header]:
    return [*client.request_headers(path, "POST"), *extra]


# h2spec: every case of the conformance tester, as a client would run it


@pytest.mark.skipif(not H2SPEC.exists(), reason=f"h2spec is not at {H2SPEC} (../shared/anchors/)")
async def test_h2spec_passes_every_case(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "127.0.0.1")  # h2spec's :authority, without SNI
    run = await asyncio.create_subprocess_exec(
        str(H2SPEC),
        "--tls",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(proxy.https_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(run.communicate(), 120))[0].decode(errors="replace")
    summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", output)
    assert summary, output[-3000:]
    total, passed, skipped, failed = map(int, summary.groups())
    failures = "\n".join(line for line in output.splitlines() if "\u00d7" in line or "Expected" in line)
    assert (total, passed, skipped, failed) == (H2SPEC_CASES, H2SPEC_CASES, 0, 0), failures or output[-3000:]


# 3.4 HTTP/2 connection preface


@pytest.mark.parametrize(
    "preface",
    [
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize(), id="wrong-magic"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h2.test\r\n\r\n", id="http1-request"),
        pytest.param(PREFACE + PingFrame(0, opaque_data=b"12345678").serialize(), id="ping-before-settings"),
    ],
)
async def test_invalid_connection_preface_is_a_connection_error(connect: Connect, preface: bytes):
    client = await connect(handshake=False)
    client.send_raw(preface)
    frame = await client.wait_for(GoAwayFrame)
    if isinstance(frame, GoAwayFrame):
        assert frame.error_code == ErrorCodes.PROTOCOL_ERROR, client.summary()
    assert not any(isinstance(f, PingFrame) and "ACK" in f.flags for f in client.received), client.summary()
    assert await client.wait_closed(), f"the connection must close: {client.summary()}"


# 4.2 Frame size


async def test_data_frame_of_the_default_max_frame_size_is_accepted(h2: H2RawClient):
    payload = bytes(range(256)) * (DEFAULT_MAX_FRAME_SIZE // 256)
    h2.send_headers(1, post_headers(h2, "/echo", ("content-length", str(len(payload)))), end_stream=False)
    h2.send(DataFrame(1, payload, flags=["END_STREAM"]))
    headers, body = await h2.read_response(1)
    assert (":status", "200") in headers
    assert body == payload


async def test_data_frame_larger_than_max_frame_size_is_a_frame_size_error(h2: H2RawClient):
    h2.send_headers(1, post_headers(h2), end_stream=False)
    h2.send(DataFrame(1, b"x" * (DEFAULT_MAX_FRAME_SIZE + 1), flags=["END_STREAM"]))
    # RFC 9113 4.2 lets DATA on a stream be a stream error; frames that alter the connection may not.
    await expect_stream_error(h2, 1, ErrorCodes.FRAME_SIZE_ERROR)


async def test_headers_frame_larger_than_max_frame_size_is_a_connection_error(h2: H2RawClient):
    headers = [*h2.request_headers(), ("x-big", "a" * (DEFAULT_MAX_FRAME_SIZE + 100))]
    block = Encoder().encode(headers, huffman=False)
    assert len(block) > DEFAULT_MAX_FRAME_SIZE
    h2.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    await expect_connection_error(h2, ErrorCodes.FRAME_SIZE_ERROR)


# 5.1 Stream states


async def test_data_on_an_idle_stream_is_a_connection_error(h2: H2RawClient):
    h2.send(DataFrame(1, b"hello", flags=["END_STREAM"]))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


async def test_data_on_a_half_closed_remote_stream_is_stream_closed(h2: H2RawClient):
    h2.send_headers(1, h2.request_headers("/slow?s=3"))  # END_STREAM: half-closed (remote) while it waits
    h2.send(DataFrame(1, b"late", flags=["END_STREAM"]))
    await expect_stream_error(h2, 1, ErrorCodes.STREAM_CLOSED)


async def test_headers_on_a_stream_closed_by_end_stream_is_stream_closed(h2: H2RawClient):
    h2.send_headers(1)
    headers, _ = await h2.read_response(1)
    assert (":status", "200") in headers
    h2.send_headers(1)
    await expect_stream_error(h2, 1, ErrorCodes.STREAM_CLOSED)


async def test_even_stream_id_from_the_client_is_a_connection_error(h2: H2RawClient):
    h2.send_headers(2)
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


async def test_stream_id_lower_than_a_previous_one_is_a_connection_error(h2: H2RawClient):
    h2.send_headers(5)
    h2.send_headers(3)
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


# 5.1.2 Stream concurrency


async def test_streams_beyond_max_concurrent_streams_are_refused_and_others_go_on(
    h2: H2RawClient, connect: Connect
):
    limit = h2.server_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
    assert limit is not None, f"the server must advertise MAX_CONCURRENT_STREAMS: {h2.server_settings}"
    assert 0 < limit <= 1000, limit
    for index in range(limit):
        h2.send_headers(2 * index + 1, h2.request_headers("/slow?s=3"))
    extra = 2 * limit + 1
    h2.send_headers(extra, h2.request_headers("/slow?s=3"))
    frame = await h2.wait_for(Frame, is_error_frame(extra), timeout=2.5)  # before any /slow answers
    assert not isinstance(frame, Closed), h2.summary()
    assert isinstance(frame, GoAwayFrame | RstStreamFrame)
    allowed = (
        {ErrorCodes.PROTOCOL_ERROR}
        if isinstance(frame, GoAwayFrame)
        else {ErrorCodes.PROTOCOL_ERROR, ErrorCodes.REFUSED_STREAM}
    )
    assert frame.error_code in allowed, h2.summary()
    await served(await connect(), 1)  # another connection meanwhile


# 6.5 SETTINGS


async def test_settings_ack_with_a_payload_is_a_frame_size_error(h2: H2RawClient):
    h2.send_raw(raw_frame(SETTINGS_TYPE, ACK, 0, b"\x00\x03\x00\x00\x00\x64"))
    await expect_connection_error(h2, ErrorCodes.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        (SettingCodes.ENABLE_PUSH, 2, ErrorCodes.PROTOCOL_ERROR),
        (SettingCodes.INITIAL_WINDOW_SIZE, 2**31, ErrorCodes.FLOW_CONTROL_ERROR),
        (SettingCodes.MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE - 1, ErrorCodes.PROTOCOL_ERROR),
        (SettingCodes.MAX_FRAME_SIZE, 2**24, ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["enable-push-2", "initial-window-2**31", "max-frame-size-16383", "max-frame-size-2**24"],
)
async def test_settings_value_out_of_range_is_a_connection_error(h2: H2RawClient, setting, value, code):
    h2.send(SettingsFrame(0, settings={setting: value}))
    await expect_connection_error(h2, code)


async def test_settings_on_a_stream_is_a_connection_error(h2: H2RawClient):
    h2.send_raw(raw_frame(SETTINGS_TYPE, 0, 1, b""))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


async def test_settings_length_not_a_multiple_of_6_is_a_frame_size_error(h2: H2RawClient):
    h2.send_raw(raw_frame(SETTINGS_TYPE, 0, 0, b"\x00\x03\x00"))
    await expect_connection_error(h2, ErrorCodes.FRAME_SIZE_ERROR)


# 6.7 PING


async def test_ping_is_answered_with_an_ack_carrying_the_same_payload(h2: H2RawClient):
    h2.send(PingFrame(0, opaque_data=b"h2spec\x01\x02"))
    frame = await h2.wait_for(PingFrame)
    assert isinstance(frame, PingFrame), h2.summary()
    assert "ACK" in frame.flags, h2.summary()
    assert bytes(frame.opaque_data) == b"h2spec\x01\x02"


@pytest.mark.parametrize("length", [6, 9])
async def test_ping_with_a_length_other_than_8_is_a_frame_size_error(h2: H2RawClient, length: int):
    h2.send_raw(raw_frame(PING_TYPE, 0, 0, b"p" * length))
    await expect_connection_error(h2, ErrorCodes.FRAME_SIZE_ERROR)


async def test_ping_on_a_stream_is_a_connection_error(h2: H2RawClient):
    h2.send_raw(raw_frame(PING_TYPE, 0, 1, b"12345678"))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


# 6.9 WINDOW_UPDATE


def open_stream(client: H2RawClient) -> int:
    """Stream 1 open in both directions: a POST to /echo whose body has not been sent."""
    client.send_headers(1, post_headers(client), end_stream=False)
    return 1


async def test_window_update_of_zero_on_the_connection_is_a_connection_error(h2: H2RawClient):
    h2.send_raw(raw_frame(WINDOW_UPDATE_TYPE, 0, 0, (0).to_bytes(4, "big")))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


async def test_window_update_of_zero_on_a_stream_is_a_protocol_error(h2: H2RawClient):
    stream_id = open_stream(h2)
    h2.send_raw(raw_frame(WINDOW_UPDATE_TYPE, 0, stream_id, (0).to_bytes(4, "big")))
    await expect_stream_error(h2, stream_id, ErrorCodes.PROTOCOL_ERROR)


async def test_connection_window_beyond_2_31_minus_1_is_a_flow_control_error(h2: H2RawClient):
    h2.send(WindowUpdateFrame(0, window_increment=MAX_WINDOW))
    h2.send(WindowUpdateFrame(0, window_increment=MAX_WINDOW))
    await expect_connection_error(h2, ErrorCodes.FLOW_CONTROL_ERROR)


async def test_stream_window_beyond_2_31_minus_1_is_a_flow_control_error(h2: H2RawClient):
    stream_id = open_stream(h2)
    h2.send(WindowUpdateFrame(stream_id, window_increment=MAX_WINDOW))
    h2.send(WindowUpdateFrame(stream_id, window_increment=MAX_WINDOW))
    await expect_stream_error(h2, stream_id, ErrorCodes.FLOW_CONTROL_ERROR)


# 6.10 CONTINUATION


async def test_continuation_after_a_completed_header_block_is_a_connection_error(h2: H2RawClient):
    h2.send_headers(1)
    h2.send(ContinuationFrame(1, h2.headers_block([("x-extra", "1")]), flags=["END_HEADERS"]))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "interleaved",
    [
        pytest.param(PingFrame(0, opaque_data=b"12345678"), id="ping"),
        pytest.param(DataFrame(1, b"x"), id="data-same-stream"),
        pytest.param(ContinuationFrame(3, b"", flags=["END_HEADERS"]), id="continuation-other-stream"),
    ],
)
async def test_frame_interleaved_in_a_header_block_is_a_connection_error(h2: H2RawClient, interleaved: Frame):
    block = h2.headers_block(h2.request_headers())
    half = len(block) // 2
    h2.send(HeadersFrame(1, block[:half], flags=["END_STREAM"]))
    h2.send(interleaved)
    h2.send(ContinuationFrame(1, block[half:], flags=["END_HEADERS"]))
    await expect_connection_error(h2, ErrorCodes.PROTOCOL_ERROR)


# 4.3 Field section compression and decompression


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\x80", id="indexed-field-0"),
        pytest.param(b"\xc6", id="index-beyond-the-tables"),
        pytest.param(b"\x3f\xe1\x3f", id="table-size-update-above-the-settings-limit"),
    ],
)
async def test_undecodable_field_block_is_a_compression_error(h2: H2RawClient, block: bytes):
    h2.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
    await expect_connection_error(h2, ErrorCodes.COMPRESSION_ERROR)


# 8.2 HTTP fields


@pytest.mark.parametrize(
    "field",
    [
        pytest.param(("X-Upper", "1"), id="uppercase-name"),
        pytest.param(("connection", "keep-alive"), id="connection"),
        pytest.param(("keep-alive", "timeout=5"), id="keep-alive"),
        pytest.param(("proxy-connection", "keep-alive"), id="proxy-connection"),
        pytest.param(("transfer-encoding", "chunked"), id="transfer-encoding"),
        pytest.param(("upgrade", "websocket"), id="upgrade"),
        pytest.param(("te", "gzip"), id="te-not-trailers"),
        pytest.param(("x-smuggle", "a\r\nx-injected: 1"), id="crlf-in-value"),
        pytest.param(("x-nul", "a\x00b"), id="nul-in-value"),
    ],
)
async def test_malformed_field_is_a_protocol_error(h2: H2RawClient, field: Header):
    h2.send_headers(1, [*h2.request_headers(), field])
    await expect_only_the_stream_reset(h2, 1)


async def test_te_trailers_is_allowed(h2: H2RawClient):
    h2.send_headers(1, [*h2.request_headers(), ("te", "trailers")])
    headers, _ = await h2.read_response(1)
    assert (":status", "200") in headers


# 8.3 HTTP control data (pseudo-header fields)


def without(name: str) -> Callable[[list[Header]], list[Header]]:
    return lambda headers: [h for h in headers if h[0] != name]


PSEUDO_HEADER_CASES = {
    "missing-path": without(":path"),
    "missing-method": without(":method"),
    "missing-scheme": without(":scheme"),
    "duplicated-path": lambda headers: [*headers, (":path", "/other")],
    "pseudo-after-regular": lambda headers: [*headers[:-1], ("x-regular", "1"), headers[-1]],
    "unknown-pseudo": lambda headers: [*headers, (":foo", "bar")],
    "response-pseudo-in-request": lambda headers: [*headers, (":status", "200")],
    "empty-path": lambda headers: [*without(":path")(headers), (":path", "")],
}


@pytest.mark.parametrize("case", PSEUDO_HEADER_CASES)
async def test_malformed_pseudo_headers_are_a_protocol_error(h2: H2RawClient, case: str):
    headers = PSEUDO_HEADER_CASES[case](h2.request_headers())
    h2.send_headers(1, headers)
    await expect_only_the_stream_reset(h2, 1)


# 8.1.1 Malformed messages: content-length


@pytest.mark.parametrize("sent", [5, 15], ids=["fewer-bytes", "more-bytes"])
async def test_content_length_not_matching_the_data_is_a_protocol_error(h2: H2RawClient, sent: int):
    h2.send_headers(1, post_headers(h2, "/echo", ("content-length", "10")), end_stream=False)
    h2.send(DataFrame(1, b"x" * sent, flags=["END_STREAM"]))
    await expect_stream_error(h2, 1, ErrorCodes.PROTOCOL_ERROR)


# 8 Requests that work


async def test_get_is_answered_with_status_200_and_the_upstream_body(h2: H2RawClient):
    h2.send_headers(1, h2.request_headers("/hello?x=1"))
    headers, body = await h2.read_response(1)
    assert headers[0] == (":status", "200"), headers
    answer = json.loads(body)
    assert (answer["upstream"], answer["path"], answer["method"]) == ("blue", "/hello?x=1", "GET")
    assert answer["headers"]["Host"] == HOST, ":authority becomes Host for the HTTP/1.1 upstream"


async def test_misbehaving_connections_do_not_affect_others(connect: Connect):
    bystander = await connect()
    bad_preface = await connect(handshake=False)
    bad_preface.send_raw(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    bad_settings = await connect()
    bad_settings.send(SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 2}))
    bad_hpack = await connect()
    bad_hpack.send(HeadersFrame(1, b"\x80", flags=["END_HEADERS", "END_STREAM"]))
    for client in (bad_preface, bad_settings, bad_hpack):
        assert await client.wait_closed(), f"misbehaving connection still open: {client.summary()}"

    for client in (bystander, await connect()):
        client.send_headers(1)
        headers, body = await client.read_response(1)
        assert (":status", "200") in headers, client.summary()
        assert json.loads(body)["upstream"] == "blue"


# Clients that misbehave on purpose: each gets the answer RFC 9113 names (or is held back by TCP), holds
# bounded memory, and the proxy's other connections go on.


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


async def test_a_body_over_the_limit_in_its_last_frame_gets_413_and_the_connection_goes_on(
    proxy, upstreams, ca
):
    """The 413 is answered while the frame that carries END_STREAM is still being read."""
    await deploy_tls(
        proxy, ca, upstreams[0].address, HOST, args=("--buffer-requests", "--max-request-body=10")
    )
    client = await H2RawClient.connect(proxy.https_port, HOST, client_context(ca))
    try:
        client.send_headers(1, post_headers(client), end_stream=False)
        client.send(DataFrame(1, b"x" * 100, flags=["END_STREAM"]))
        headers, _ = await client.read_response(1)
        assert (":status", "413") in headers, client.summary()
        client.send_headers(3, client.request_headers("/next"))
        frame = await client.wait_for(HeadersFrame, lambda f: f.stream_id == 3)
        assert isinstance(frame, HeadersFrame), client.summary()
        assert (":status", "200") in client.header_blocks[3][0], client.summary()
    finally:
        await client.close()


async def test_streams_the_client_breaks_count_toward_the_rapid_reset_limit(h2: H2RawClient):
    """A request started and then cancelled by a frame that breaks the rules (here a PRIORITY that makes the
    stream depend on itself: a stream error) is a reset like the client's own RST_STREAM."""
    for index in range(MAX_RESETS + 50):
        stream_id = 2 * index + 1
        h2.send_headers(stream_id, h2.request_headers("/slow?s=5"))
        h2.send_raw(raw_frame(PRIORITY_TYPE, 0, stream_id, stream_id.to_bytes(4, "big") + b"\x10"))
    frame = await h2.wait_for(GoAwayFrame, timeout=10)
    assert isinstance(frame, GoAwayFrame), h2.summary()
    assert frame.error_code == ErrorCodes.ENHANCE_YOUR_CALM, h2.summary()
