"""The wrapped app process: started with PORT set, sent the signals pythrust gets, waited for."""

from __future__ import annotations

import asyncio
import os
import signal

RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)


class ChildProcess:
    """One app process, in pythrust's process group, with stdin/stdout/stderr passed through."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, argv: list[str], port: int) -> ChildProcess:
        """Start `argv` (looked up on PATH, no shell) with `PORT=port`; OSError if it cannot start."""
        env = {**os.environ, "PORT": str(port)}
        return cls(await asyncio.create_subprocess_exec(*argv, env=env))

    def relay(self, signum: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self) -> int:
        """The exit status pythrust exits with: the child's, or 128 + signal when it was killed."""
        code = await self.process.wait()
        return 128 - code if code < 0 else code
