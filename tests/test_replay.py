"""Answers kept for byte-identical requests (proxy/http/replay.py), on a real listener on loopback.

The pool here answers from memory as pythrust's files and cache hits do, and
numbers its answers: a request answered again from the kept answer gets the
same number, one that reaches the pool gets a new one.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.http import replay
from proxy.http.client import ClientConnection
from proxy.http.request import Request
from proxy.http.server import HttpServer
from proxy.http.upstream import connection_tail
from proxy.log import JsonLog

# The user agent's text looks like the log line's own fields: the line must still be cut right.
GET = (
    b"GET /asset.css HTTP/1.1\r\nHost: example.test\r\nAccept-Encoding: gzip\r\n"
    b'User-Agent: tricky/1 "duration":5,"method":"x\r\n\r\n'
)


class NumberedAnswers:
    """Dispatcher and pool in one: every request is answered at once with the next number."""

    address_bytes = b""
    answers_itself = True

    def __init__(self) -> None:
        self.asked = 0
        self.valid = True
        self.lasts = 60.0  # seconds an answer may be replayed

    def route(self, request: Request) -> int:
        request.pool = self
        return 0

    def acquire(self, request: Request, client: ClientConnection) -> None:
        self.asked += 1
        body = b"answer %d for %s" % (self.asked, request.url)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
        response += connection_tail(request, client) + body
        request.status = 200
        request.response_started = True
        request.response_bytes = len(body)
        client.transport.write(response)
        client.response_finished(request)
        expires = asyncio.get_running_loop().time() + self.lasts
        replay.offer(client, request, response, expires, lambda: self.valid)


class Listener:
    def __init__(self, server: HttpServer, pool: NumberedAnswers, port: int, log_path: Path) -> None:
        self.server, self.pool, self.port, self.log_path = server, pool, port, log_path

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def log_lines(self) -> list[dict]:
        self.server.log.flush()
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


@pytest.fixture
async def listener(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Listener]:
    log_path = tmp_path / "access.log"
    log = JsonLog(fd=os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    pool = NumberedAnswers()
    log_requests = getattr(request, "param", True)
    server = HttpServer(pool, log, log_requests=log_requests, replay_answers=True)
    listening = await server.listen("127.0.0.1", 0)
    yield Listener(server, pool, listening.sockets[0].getsockname()[1], log_path)
    await server.shutdown(1.0)
    os.close(log.fd)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes = GET) -> bytes:
    """Send `data` in one write; the body of the response (framed by its Content-Length)."""
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_repeated_request_is_answered_again_without_the_pool_and_logged_each_time(listener):
    reader, writer = await listener.connect()
    bodies = [await answer(reader, writer) for _ in range(4)]  # noted, kept, then answered again
    other_reader, other_writer = await listener.connect()
    bodies.append(await answer(other_reader, other_writer))  # kept for the listener, not the connection
    writer.close()
    other_writer.close()
    assert bodies == [b"answer 1 for /asset.css"] + [b"answer 2 for /asset.css"] * 4
    assert listener.pool.asked == 2
    lines = listener.log_lines()
    assert len(lines) == 5, "a replayed request is still a request in the access log"
    per_request = ("time", "duration", "client_addr", "port")
    first = {k: v for k, v in lines[0].items() if k not in per_request}
    for line in lines[1:]:
        assert {k: v for k, v in line.items() if k not in per_request} == first
        assert isinstance(line["duration"], int) and line["duration"] >= 0
    assert first["path"] == "/asset.css" and first["status"] == 200 and first["resp_content_length"] == 23
    assert first["user_agent"] == 'tricky/1 "duration":5,"method":"x' and first["method"] == "GET"


@pytest.mark.parametrize("listener", [False], indirect=True)
async def test_with_the_access_log_off_repeats_are_answered_and_not_logged(listener):
    reader, writer = await listener.connect()
    bodies = [await answer(reader, writer) for _ in range(4)]
    writer.close()
    assert bodies == [b"answer 1 for /asset.css"] + [b"answer 2 for /asset.css"] * 3
    assert listener.log_lines() == []


async def test_a_request_differing_in_any_byte_reaches_the_pool(listener):
    reader, writer = await listener.connect()
    assert await answer(reader, writer) == b"answer 1 for /asset.css"
    other = GET.replace(b"gzip", b"br")
    assert await answer(reader, writer, other) == b"answer 2 for /asset.css"
    assert await answer(reader, writer, other) == b"answer 3 for /asset.css"
    assert await answer(reader, writer, other) == b"answer 3 for /asset.css"
    assert await answer(reader, writer) == b"answer 4 for /asset.css"
    assert await answer(reader, writer) == b"answer 4 for /asset.css"
    writer.close()


async def test_requests_that_arrive_together_are_each_answered_and_not_kept(listener):
    reader, writer = await listener.connect()
    writer.write(GET + GET)
    for number in (1, 2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(23) == b"answer %d for /asset.css" % number
    for number in (3, 4, 4):  # now alone: noted, kept, answered again
        assert await answer(reader, writer) == b"answer %d for /asset.css" % number
    writer.close()


async def test_a_request_that_closes_its_connection_is_not_kept(listener):
    closing = GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    for number in (1, 2):
        reader, writer = await listener.connect()
        assert await answer(reader, writer, closing) == b"answer %d for /asset.css" % number
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the connection closes after the answer"
        writer.close()


async def test_an_answer_no_longer_valid_is_made_anew(listener):
    reader, writer = await listener.connect()
    for number in (1, 2, 2):
        assert await answer(reader, writer) == b"answer %d for /asset.css" % number
    listener.pool.valid = False  # e.g. its file was edited
    assert await answer(reader, writer) == b"answer 3 for /asset.css"
    listener.pool.valid = True
    for number in (3, 3):  # the new answer was kept at once: its bytes were seen before
        assert await answer(reader, writer) == b"answer %d for /asset.css" % number
    writer.close()


async def test_an_expired_answer_is_made_anew(listener):
    listener.pool.lasts = -1.0
    reader, writer = await listener.connect()
    for number in (1, 2, 3):
        assert await answer(reader, writer) == b"answer %d for /asset.css" % number
    writer.close()


async def test_the_kept_answers_are_dropped_when_they_would_exceed_their_memory(listener, monkeypatch):
    reader, writer = await listener.connect()
    replays = listener.server.replays[b"http"]
    a, b = (GET.replace(b"/asset.css", target) for target in (b"/a", b"/b"))
    for _ in range(2):
        await answer(reader, writer, a)  # noted, then kept
    kept_a = replays.held_bytes
    assert kept_a > len(a) + len(b"answer 2 for /a"), "the request, the answer and their upkeep count"
    monkeypatch.setattr(replay, "MAX_HELD_BYTES", kept_a + kept_a // 2)  # room for one like it
    for number in (3, 4):
        assert await answer(reader, writer, b) == b"answer %d for /b" % number  # noted, then kept
    assert list(replays.held) == [b], "keeping b dropped a"
    assert replays.held_bytes == kept_a  # the same size of request, answer and log fields
    assert await answer(reader, writer, a) == b"answer 5 for /a"  # seen before: kept again, b dropped
    assert list(replays.held) == [a]
    writer.close()


async def test_an_answer_dropped_as_stale_gives_back_its_memory(listener):
    reader, writer = await listener.connect()
    replays = listener.server.replays[b"http"]
    for _ in range(2):
        await answer(reader, writer)
    assert replays.held_bytes > 0
    listener.pool.valid = False
    await answer(reader, writer)  # the stale answer dropped, the new one kept in its place
    (kept,) = replays.held.values()
    assert replays.held_bytes == kept.size
    writer.close()


async def test_requests_seen_once_are_noted_by_hash_and_bounded(listener, monkeypatch):
    monkeypatch.setattr(replay, "MAX_NOTED", 3)
    reader, writer = await listener.connect()
    replays = listener.server.replays[b"http"]
    for number in range(1, 5):
        await answer(reader, writer, GET.replace(b"/asset.css", b"/once-%d" % number))
        assert len(replays.noted) == (number - 1) % 3 + 1
    assert replays.held == {}
    writer.close()
