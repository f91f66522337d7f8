"""The control process and a worker talk over a Unix socket pair: pickled tuples, each behind its length.

Both ends are our own processes, started by the control process with the socket inherited, so pickle
(which sends the routing table as the value it is) is safe here. Messages arrive in the order they were
sent: a worker always applies a table before it answers a drain sent after it.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")


class Channel:
    """One end of a control/worker socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    def send(self, *message: Any) -> None:
        """Queue one message; a closed channel drops it (the other end is gone: nobody to tell)."""
        if self._writer.is_closing():
            return
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None once the other end has closed (or died)."""
        try:
            head = await self._reader.readexactly(_LENGTH.size)
            return pickle.loads(await self._reader.readexactly(_LENGTH.unpack(head)[0]))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def close(self) -> None:
        self._writer.close()
