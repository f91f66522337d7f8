"""What the Kamal tests share: requests through a host's proxy, a bounded polling client, SSH to a host, and
where the real Kamal is.

Kamal (`../shared/kamal`: basecamp/kamal v2.12.0 with the gems Debian lacks) needs Ruby from Debian, which
its `install.sh` installs as root; scripts/test runs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from tests.testbed.fixture import Testbed

ROOT = Path(__file__).resolve().parent.parent
APP_HOST = "app.test"  # the Host the test app is deployed for
T = TypeVar("T")


def kamal_dir() -> Path | None:
    """The Kamal beside this clone: $PYPROXY_KAMAL_DIR, else ../shared/kamal (CI), else ./shared/kamal."""
    candidates = [
        os.environ.get("PYPROXY_KAMAL_DIR"),
        ROOT.parent / "shared" / "kamal",
        ROOT / "shared" / "kamal",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "kamal").is_file():
            return Path(candidate).resolve()
    return None


def kamal_unavailable_reason() -> str | None:
    """Why the real Kamal cannot run here, or None."""
    found = kamal_dir()
    if found is None:
        return "the real Kamal is not beside this clone (../shared/kamal; or set PYPROXY_KAMAL_DIR)"
    if shutil.which("ruby") is None:
        return f"Kamal needs Ruby: run {found}/install.sh as root (scripts/test does)"
    return None


class Answer:
    """One HTTP/1.1 response, read whole (the test app's bodies are small)."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1]) if lines[0].startswith("HTTP/1.") else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace").strip()


async def request(
    host: str,
    path: str = "/version",
    host_header: str = APP_HOST,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> Answer:
    """GET `path` from `host`'s port 80 (443 with `tls`, SNI = the Host) on a new connection, as a browser."""
    async with asyncio.timeout(timeout):
        port, sni = (443, host_header) if tls else (80, None)
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=sni)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
            return Answer(await reader.read(-1))
        finally:
            writer.close()


async def served(host: str) -> str:
    """The version the app behind `host`'s proxy says it is (fails on anything but a 200)."""
    answer = await request(host)
    assert answer.status == 200, f"{host}: {answer.status} {answer.text[:200]}"
    return answer.text


async def eventually(check: Callable[[], Awaitable[T]], seconds: float = 30) -> T:
    """`check()`'s result once it stops raising, polling every 0.2 s; its last error after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await check()
        except (AssertionError, OSError, TimeoutError):
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.2)


class Poller:
    """A client that polls every host back to back (one connection per request) while some work runs, and
    counts the answers that were not a 200 from the app. Bounded: it stops after `limit` seconds whatever
    happens."""

    def __init__(
        self, hosts: list[str], limit: float = 300, fetch: Callable[[str], Awaitable[str]] | None = None
    ) -> None:
        self.hosts = hosts
        self.limit = limit
        self.fetch = fetch or served  # one request to a host: the version it served, or raises
        self.ok = 0
        self.versions: set[str] = set()
        self.failed: list[str] = []
        self._running = True

    async def _poll(self, host: str) -> None:
        deadline = time.monotonic() + self.limit
        while self._running and time.monotonic() < deadline:
            try:
                self.versions.add(await self.fetch(host))
                self.ok += 1
            except (AssertionError, OSError, TimeoutError) as exc:
                self.failed.append(f"{host}: {exc!r}")

    async def during(self, work: Callable[[], T]) -> T:
        """Run the blocking `work` in a thread while polling; its result."""
        tasks = [asyncio.get_running_loop().create_task(self._poll(host)) for host in self.hosts]
        try:
            return await asyncio.to_thread(work)
        finally:
            self._running = False
            await asyncio.gather(*tasks)


def on_host(
    bed: Testbed, host: str, command: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> str:
    """Run `command` in root's shell on `host` over SSH, as Kamal does; its stdout (stderr only when it
    fails, in the assertion)."""
    done = subprocess.run(
        bed.ssh_command(host, command), input=input, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, (
            f"{host}: `{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout
