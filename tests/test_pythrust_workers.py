"""pythrust and `pythrust serve` with WORKERS=2: real processes, real sockets.

A stopped process (SIGSTOP) accepts nothing, so while one is stopped every new connection is the other's:
that is how these tests tell that both serve, and that a replacement does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import raw_request
from tests.pythrust import APP, ROOT, Pythrust

WORKER_STARTED = r'"Worker started".*"pid": ?(\d+)'


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def get(port: int, target: str = "/") -> bytes:
    request = f"GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n".encode()
    return await asyncio.wait_for(raw_request(port, request), 5)


def worker_pids(thrust: Pythrust) -> list[int]:
    """The pids of every extra worker started so far, oldest first."""
    return [int(found.group(1)) for line in thrust.lines if (found := re.search(WORKER_STARTED, line))]


async def exited(pid: int, timeout: float = 10) -> None:
    """Returns once `pid` (not our child: pythrust's) has exited."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop.add_reader(fd, done.set_result, None)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def start_app(start_pythrust) -> Pythrust:
    thrust = await start_pythrust(WORKERS="2")
    await thrust.wait_for_line(WORKER_STARTED)
    await thrust.wait_for_line("app listening")
    return thrust


async def test_both_processes_serve_the_app(start_pythrust):
    thrust = await start_app(start_pythrust)
    hello = f"hello on {thrust.target_port}".encode()
    (worker,) = worker_pids(thrust)
    for pid in (thrust.process.pid, worker):
        with stopped(pid):
            for _ in range(5):
                assert (await get(thrust.http_port)).endswith(hello)


async def test_both_processes_serve_a_directory(start_pythrust, tmp_path):
    (tmp_path / "index.html").write_bytes(b"<p>static</p>")
    thrust = await start_pythrust("serve", str(tmp_path), WORKERS="2")
    await thrust.wait_for_line(WORKER_STARTED)
    (worker,) = worker_pids(thrust)
    for pid in (thrust.process.pid, worker):
        with stopped(pid):
            assert (await get(thrust.http_port, "/index.html")).endswith(b"<p>static</p>")


async def test_a_killed_worker_is_replaced_and_the_replacement_serves(start_pythrust):
    thrust = await start_app(start_pythrust)
    (worker,) = worker_pids(thrust)
    os.kill(worker, signal.SIGKILL)
    await thrust.wait_for_line(r'"Worker exited: starting another".*signal SIGKILL')
    found = await thrust.wait_for_line(rf'"Worker started".*"pid": ?(?!{worker}\b)(\d+)')
    with stopped(thrust.process.pid):
        assert (await get(thrust.http_port)).endswith(f"hello on {thrust.target_port}".encode())
    assert worker_pids(thrust) == [worker, int(found.group(1))]


async def test_the_workers_stop_with_pythrust(start_pythrust):
    thrust = await start_app(start_pythrust)
    (worker,) = worker_pids(thrust)
    thrust.process.send_signal(signal.SIGTERM)
    assert await thrust.exit_status() == 0
    await exited(worker, timeout=1)


async def test_the_workers_stop_when_pythrust_is_killed(start_pythrust, tmp_path):
    (tmp_path / "index.html").write_bytes(b"<p>static</p>")
    thrust = await start_pythrust("serve", str(tmp_path), WORKERS="2")
    await thrust.wait_for_line(WORKER_STARTED)
    (worker,) = worker_pids(thrust)
    thrust.process.kill()
    await thrust.exit_status()
    await exited(worker)  # its stdin, a pipe from pythrust, closed: it is nobody's to serve for


async def test_access_log_lines_of_both_processes_stay_whole(start_pythrust):
    """Long lines, so that what each process writes at once is more than a pipe keeps whole by itself."""
    thrust = await start_app(start_pythrust)
    padding = "x" * 1000
    paths = {f"/{batch}-{n}-{padding}" for batch in range(30) for n in range(10)}
    for batch in range(30):  # 10 at a time: the app (http.server) has a listen backlog of 5
        await asyncio.gather(*(get(thrust.http_port, f"/{batch}-{n}-{padding}") for n in range(10)))
    pending = set(paths)
    for _ in range(300):  # bounded; each round waits for a new line
        pending -= {json.loads(line).get("path") for line in thrust.lines if line.startswith("{")}
        if not pending:
            break
        thrust.new_line.clear()
        await asyncio.wait_for(thrust.new_line.wait(), 5)
    requests = [json.loads(line) for line in thrust.lines if '"Request"' in line]  # each line whole JSON
    assert sorted(r["path"] for r in requests) == sorted(paths)


async def test_workers_start_in_an_app_directory_that_shadows_pythrust_modules(start_pythrust, tmp_path):
    for package in ("proxy", "thruster"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise SystemExit('the app, not pythrust')\n")
    thrust = await start_pythrust(sys.executable, str(APP), cwd=tmp_path, WORKERS="2")
    await thrust.wait_for_line(WORKER_STARTED)
    await thrust.wait_for_line("app listening")
    with stopped(thrust.process.pid):
        assert (await get(thrust.http_port)).endswith(f"hello on {thrust.target_port}".encode())


@pytest.mark.parametrize(
    "env",
    [{"WORKERS": "0"}, {"WORKERS": "two"}, {"WORKERS": "-1"}, {"WORKERS": "2", "TLS_DOMAIN": "app.test"}],
    ids=["zero", "word", "negative", "with-tls-domain"],
)
@pytest.mark.parametrize("command", [["serve", "."], [sys.executable, "-c", "pass"]], ids=["serve", "app"])
def test_a_bad_workers_value_exits_2_with_one_line(tmp_path: Path, env: dict[str, str], command: list[str]):
    finished = subprocess.run(
        [sys.executable, "-m", "thruster", *command],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HTTP_PORT": "0", **env},
        capture_output=True,
        timeout=10,
    )
    assert finished.returncode == 2
    assert finished.stderr.count(b"\n") == 1 and b"WORKERS" in finished.stderr, finished.stderr
