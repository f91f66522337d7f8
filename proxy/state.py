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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SavedState:
    """What `load` found: the services it could read, and why the rest could not be."""

    services: list[dict[str, Any]]
    found: bool = True  # False: no state file yet (a first boot)
    problem: str = ""  # why the file did not read whole; it was then moved to `moved_to`
    moved_to: Path | None = None


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._frozen = ""  # why saving is refused: a damaged file that could not be moved aside

    def load(self) -> SavedState:
        """Read the saved services. A damaged file (truncated, not JSON, not a list) gives up what can
        still be read, and is moved aside under a name that says so, so no later save overwrites the
        only copy of the routes it held."""
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return SavedState([], found=False)
        services, problem = _salvage(text)
        if not problem:
            return SavedState(services)
        aside = self.path.with_name(
            f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        )
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self._frozen = f"{self.path} is damaged and could not be moved aside ({exc.strerror})"
            return SavedState(services, problem=problem)
        return SavedState(services, problem=problem, moved_to=aside)

    async def save(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """Write what `snapshot()` returns once any earlier write has finished."""
        if self._frozen:
            raise OSError(f"not saved: {self._frozen}")
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


def _salvage(text: str) -> tuple[list[dict[str, Any]], str]:
    """The services in a state file's text, and "" or what is wrong with it.

    A file cut short (a full disk, a crash of an older version that did not write atomically) still
    gives every service written before the cut: the list is read one element at a time."""
    decoder = json.JSONDecoder()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON: {exc}"
    else:
        if not isinstance(data, list):
            return [], "expected a list of services"
        services = [entry for entry in data if isinstance(entry, dict)]
        return services, "" if len(services) == len(data) else "entries that are not services"
    services: list[dict[str, Any]] = []
    at = len(text) - len(text.lstrip())
    if text[at : at + 1] != "[":
        return services, problem
    at += 1
    while True:
        while text[at : at + 1] in (" ", "\n", "\r", "\t", ","):
            at += 1
        try:
            entry, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return services, problem
        if isinstance(entry, dict):
            services.append(entry)
