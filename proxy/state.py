"""The saved list of services: written atomically after every change, read once at start.

Atomic means temp file + fsync + rename + fsync of the directory, so a crash
or `kill -9` at any moment leaves either the old or the new file, never half
of one. Writes run in a thread (fsync can take a while) and are serialised so
the newest state is always the one that lands last.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def load(self) -> list[dict[str, Any]]:
        """The saved services; [] when there is no state yet. Raises ValueError when unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise ValueError(f"{self.path}: expected a list of services")
        return data

    async def save(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """Write what `snapshot()` returns once any earlier write has finished."""
        async with self._lock:
            data = json.dumps(snapshot(), indent=2).encode()
            await asyncio.get_running_loop().run_in_executor(None, self._write, data)

    def _write(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
