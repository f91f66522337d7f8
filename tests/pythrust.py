"""A real `pythrust` process wrapping a real app, for the pythrust tests (fixture `start_pythrust`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pebble import free_port

APPS = Path(__file__).parent / "apps"
APP = APPS / "port_app.py"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Pythrust:
    """A running `pythrust python port_app.py`, its output lines (its own JSON logs and the app's)."""

    process: asyncio.subprocess.Process
    http_port: int
    target_port: int
    lines: list[str] = field(default_factory=list)
    new_line: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))
            self.new_line.set()

    async def wait_for_line(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        async def wait() -> re.Match[str]:
            while True:
                for line in self.lines:
                    found = re.search(pattern, line)
                    if found:
                        return found
                self.new_line.clear()
                await self.new_line.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def exit_status(self, timeout: float = 15) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)


@pytest.fixture
async def start_pythrust(tmp_path: Path) -> AsyncIterator:
    started: list[tuple[Pythrust, asyncio.Task[None]]] = []

    async def start(*command: str, cwd: Path | None = None, **env: str) -> Pythrust:
        http_port, target_port = free_port(), free_port()
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HTTP_PORT": str(http_port),
            "TARGET_PORT": str(target_port),
            "BAD_GATEWAY_PAGE": str(tmp_path / "502.html"),
            **env,
        }
        argv = command or (sys.executable, str(APP))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "thruster", *argv,  # -P: as the `pythrust` script, not the cwd first
            env=environment, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, with the app in it: one kill ends both
        )  # fmt: skip
        running = Pythrust(process, http_port, target_port)
        started.append((running, asyncio.get_running_loop().create_task(running.read())))
        return running

    yield start
    for running, reader in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, signal.SIGKILL)
        await running.process.wait()
        await reader
