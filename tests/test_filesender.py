"""FileSender on real sockets, on uvloop as pyproxy and pythrust run: exact bytes, sendfile on plain TCP,
a cut connection when the file shrinks under it."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import pytest
import uvloop

from proxy.http import filesender
from proxy.http.filesender import FileSender, Piece
from proxy.http.request import Request

pytestmark = pytest.mark.timeout(30)


class Receiver(asyncio.Protocol):
    """The client connection's part FileSender needs: its transport, pause state and the two endings."""

    def __init__(self, path: Path, pieces: list[Piece]) -> None:
        self.path, self.pieces = path, pieces
        self.write_paused = False
        self.deadline = 0.0
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        fd = os.open(self.path, os.O_RDONLY)
        FileSender(self, Request(0.0), fd, self.pieces).start()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    def response_finished(self, request: Request) -> None:
        self.outcome.set_result("finished")
        self.transport.close()

    def abort(self) -> None:
        self.outcome.set_result("aborted")
        self.transport.abort()


async def send_and_read(path: Path, pieces: list[Piece]) -> tuple[str, bytes]:
    """Serve `pieces` of `path` to one connection; what the server's side said, and what was received."""
    loop = asyncio.get_running_loop()
    receivers: list[Receiver] = []

    def accept() -> Receiver:
        receivers.append(Receiver(path, pieces))
        return receivers[-1]

    server = await loop.create_server(accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    received = await asyncio.wait_for(reader.read(-1), 10)
    outcome = await asyncio.wait_for(receivers[0].outcome, 5)
    writer.close()
    server.close()
    return outcome, received


def in_uvloop(test):
    """Run the coroutine test on uvloop, whose transports are what FileSender meets in production."""

    @functools.wraps(test)
    def run(*args, **kwargs) -> None:
        uvloop.run(test(*args, **kwargs))

    return run


@in_uvloop
async def test_pieces_arrive_in_order_and_plain_tcp_uses_sendfile(tmp_path: Path, monkeypatch) -> None:
    content = os.urandom(3 * filesender.CHUNK + 123)
    path = tmp_path / "file"
    path.write_bytes(content)
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args: int) -> int:
        calls.append(args)
        return real_sendfile(*args)

    monkeypatch.setattr(filesender.os, "sendfile", counting_sendfile)
    pieces: list[Piece] = [b"head|", (10, 100), b"|between|", (1000, len(content) - 1000), b"|end"]
    outcome, received = await send_and_read(path, pieces)
    assert outcome == "finished"
    assert received == b"head|" + content[10:110] + b"|between|" + content[1000:] + b"|end"
    assert calls, "a plain TCP connection gets the file by sendfile, not by reads into Python"


@in_uvloop
async def test_a_file_that_shrinks_cuts_the_connection(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 1000)
    monkeypatch.setattr(filesender, "_sendfile_socket", lambda transport: None)  # the reading path
    outcome, received = await send_and_read(path, [b"head|", (0, 5000)])
    assert outcome == "aborted"
    assert received == b"head|" + b"x" * 1000, "the client sees a short body, never a made-up one"
