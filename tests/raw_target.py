"""A target speaking raw HTTP/1.1 on loopback, for tests that must see what reaches it and when.

It counts connections, reads each request's head and body (Content-Length or
chunked) itself, and hands them to the test's `respond` coroutine, which
writes whatever bytes it likes. The default answers with the body's length
and SHA-256 and the head it received, as JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Received:
    head: bytes
    length: int = 0
    sha256: str = ""
    complete: bool = False  # the whole body was read
    connection: int = 0  # which of the target's connections it came on (1, 2...)

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


Respond = Callable[["RawTarget", Received, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def answer_digest(target: RawTarget, got: Received, reader, writer: asyncio.StreamWriter) -> None:
    body = json.dumps({"length": got.length, "sha256": got.sha256, "head": got.head.decode("latin-1")})
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body.encode()))  # fmt: skip


@dataclass
class RawTarget:
    respond: Respond = answer_digest
    read_body: bool = True  # False: the test's `respond` reads (or does not read) the body itself
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    head_seen: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection from the proxy ended
    server: asyncio.Server | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> RawTarget:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /up "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                    continue
                got = Received(head, connection=number)
                self.requests.append(got)
                self.head_seen.set()
                if self.read_body:
                    await read_body(reader, got)
                await self.respond(self, got, reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self.closed.set()


async def read_body(reader: asyncio.StreamReader, got: Received) -> None:
    digest = hashlib.sha256()
    length = got.header(b"content-length")
    if length is not None:
        left = int(length)
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            digest.update(data)
            got.length += len(data)
            left -= len(data)
    elif (got.header(b"transfer-encoding") or b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not size:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            digest.update(data)
            got.length += size
    got.sha256 = digest.hexdigest()
    got.complete = True


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[bytes, bytes]:
    """One response from the proxy: its head and its body (by Content-Length, chunked, or to the close)."""

    async def read() -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        got = Received(head)
        if status < 200:
            return head, b""
        length = got.header(b"content-length")
        if length is not None:
            return head, await reader.readexactly(int(length))
        if (got.header(b"transfer-encoding") or b"").lower() == b"chunked":
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if not size:
                    await reader.readuntil(b"\r\n")
                    return head, bytes(body)
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        return head, await reader.read(-1)

    return await asyncio.wait_for(read(), timeout)
