"""Shared test fixtures: a real `pyproxy run` process and real upstream HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.pythrust import start_pythrust  # noqa: F401  (a fixture for the pythrust tests)
from tests.raw_target import RawTarget

PYPROXY = [sys.executable, "-m", "proxy"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the test bed (real sshd, dockerd and registry) is marked `bed`, whatever its
    name, so `-m 'not bed'` runs the rest in a few minutes."""
    for item in items:
        if "testbed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.bed)


@dataclass
class CommandResult:
    status: int
    stdout: str
    stderr: str


@dataclass
class ProxyProcess:
    """A running `pyproxy run`, with helpers that drive it through the real CLI."""

    workdir: Path
    env: dict[str, str]
    extra_args: list[str]
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    https_port: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _started: asyncio.Event = field(default_factory=asyncio.Event)
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._started = asyncio.Event()
        self.process = await asyncio.create_subprocess_exec(
            *PYPROXY,
            "run",
            "--http-port=0",
            "--https-port=0",
            "--bind",
            "127.0.0.1",
            *self.extra_args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read_logs(self.process))
        await asyncio.wait_for(self._started.wait(), 15)

    async def _read_logs(self, process: asyncio.subprocess.Process) -> None:
        async for raw in process.stdout:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = {"msg": "non-json output", "text": raw.decode(errors="replace")}
            self.lines.append(line)
            self._new_line.set()
            if line.get("msg") == "Server started":
                self.port = line["http_port"]
                self.https_port = line["https_port"]
                self._started.set()

    async def stop(self, sig: int = 15) -> int:
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else 0
        process.send_signal(sig)
        status = await asyncio.wait_for(process.wait(), 20)
        await self._reader
        return status

    async def cli(self, *args: str, timeout: float = 60) -> CommandResult:
        """Run `pyproxy <args>` as an operator would."""
        process = await asyncio.create_subprocess_exec(
            *PYPROXY, *args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        return CommandResult(process.returncode, stdout.decode(), stderr.decode())

    async def deploy(self, service: str, *targets: str, args: tuple[str, ...] = ()) -> CommandResult:
        flags = [f"--target={t}" for t in targets]
        result = await self.cli("deploy", service, *flags, "--health-check-interval=100ms", *args)
        return result

    def worker_pids(self) -> dict[int, int]:
        """The live worker processes by number (from their "Worker started" lines; the latest wins)."""
        return {line["worker"]: line["pid"] for line in self.logs("Worker started")}

    def logs(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("msg") == msg]

    async def wait_for_log(self, msg: str, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The first log line with `msg` and these field values, waiting for it to be written."""

        async def wait() -> dict[str, Any]:
            while True:
                for line in self.lines:
                    if line.get("msg") == msg and all(line.get(k) == v for k, v in fields.items()):
                        return line
                self._new_line.clear()
                await self._new_line.wait()

        return await asyncio.wait_for(wait(), timeout)


def proxy_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYPROXY_SOCKET=str(workdir / "pyproxy.sock"),
        XDG_CONFIG_HOME=str(workdir / "config"),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    for name in ("HTTP_PORT", "PYPROXY_HTTP_PORT", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    return env


@pytest.fixture
def workers() -> int:
    """The `--workers` of `proxy` and `make_proxy`: 1 unless a test parametrizes it to run under more."""
    return 1


@pytest.fixture
async def proxy(tmp_path: Path, workers: int) -> AsyncIterator[ProxyProcess]:
    running = ProxyProcess(tmp_path, proxy_env(tmp_path), [f"--workers={workers}"])
    await running.start()
    yield running
    assert await running.stop() == 0, "pyproxy run must exit 0 on SIGTERM"


@pytest.fixture
async def make_proxy(tmp_path: Path, workers: int):
    """For tests that need run flags of their own, or a second process on the same state."""
    started: list[ProxyProcess] = []

    async def make(*extra_args: str) -> ProxyProcess:
        running = ProxyProcess(tmp_path, proxy_env(tmp_path), [f"--workers={workers}", *extra_args])
        await running.start()
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


@pytest.fixture
def pebble(tmp_path: Path):
    """A real pebble CA (and its mock DNS pointing every name at 127.0.0.1) for this test."""
    from tests.pebble import free_port, start_pebble

    with start_pebble(tmp_path / "pebble", http_port=free_port()) as running:
        yield running


@pytest.fixture
async def acme_proxies(tmp_path: Path, pebble) -> AsyncIterator[list[ProxyProcess]]:
    """Proxies on pebble's HTTP-01 port, trusting pebble's directory; started one at a time by the test."""
    started: list[ProxyProcess] = []
    yield started
    for running in started:
        await running.stop()


class Upstream:
    """A real HTTP server on loopback that says who it is and can be slow, echo, or speak WebSocket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.requests: list[web.Request] = []
        self.started = asyncio.Event()  # set when a /slow request has begun
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=1024**3)
        app.add_routes(
            [
                web.get("/up", self.up),
                web.get("/ws", self.websocket),
                web.route("*", "/slow", self.slow),
                web.route("*", "/echo", self.echo),
                web.route("*", "/respond", self.respond),
                web.route("*", "/{tail:.*}", self.hello),
            ]
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def up(self, request: web.Request) -> web.Response:
        return web.Response(text="OK") if self.healthy else web.Response(status=503, text="starting")

    async def hello(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        info = {
            "upstream": self.name,
            "path": request.path_qs,
            "method": request.method,
            "headers": {k: v for k, v in request.headers.items()},
        }
        return web.json_response(info)

    async def slow(self, request: web.Request) -> web.Response:
        self.started.set()
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text=f"slow from {self.name}".ljust(int(request.query.get("bytes", "0")), "."))

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Upstream": self.name})

    async def respond(self, request: web.Request) -> web.Response:
        """Answers with the query's name=value pairs as response headers (Set-Cookie may repeat)."""
        self.requests.append(request)
        response = web.Response(text=self.name)
        for name, value in request.query.items():
            response.headers.add(name, value)
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"{self.name}: {message.data}")
        return ws


@pytest.fixture
async def target() -> AsyncIterator[RawTarget]:
    """A raw HTTP/1.1 target that shows what reaches it and when (tests/raw_target.py)."""
    running = await RawTarget().start()
    yield running
    await running.stop()


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    servers = [await Upstream(name).start() for name in ("blue", "green")]
    yield servers
    for server in servers:
        await server.stop()


def strict_session(force_close: bool = False, limit: int = 100) -> aiohttp.ClientSession:
    """A client session that never resends a request a closed connection broke. aiohttp resends a GET once,
    silently, as browsers may: a test of lost requests would not see them."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=force_close, limit=limit))
    session._retry_connection = False  # private; ClientSession has __slots__: a rename fails loudly here
    return session


async def raw_request(port: int, data: bytes, read_timeout: float = 5) -> bytes:
    """Send raw bytes and read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), read_timeout)
    finally:
        writer.close()
