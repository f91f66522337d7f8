"""pythrust and `pythrust serve` with WORKERS=2: real processes, real sockets.

A stopped process (SIGSTOP) accepts nothing, so while one is stopped every new connection is the other's:
that is how these tests tell that both serve, and that a replacement does. With TLS_DOMAIN the worker
serves what pythrust orders: one test drives ExtraWorkers from the test process itself, which accepts on
nothing, so every request there is the worker's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from proxy.log import JsonLog
from proxy.tls import CertificateFiles, ServedCertificates
from tests.conftest import raw_request
from tests.pebble import free_port
from tests.pythrust import APP, ROOT, Pythrust
from thruster.config import load
from thruster.tls import AcmeCertificates
from thruster.workers import ExtraWorkers

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


async def test_a_certificate_pythrust_orders_is_served_by_the_worker(start_pythrust, pebble, tmp_path):
    https_port = free_port()
    thrust = await start_pythrust(
        WORKERS="2",
        TLS_DOMAIN="app.test",
        HTTP_PORT=str(pebble.http_port),  # where pebble validates HTTP-01: either process may answer
        HTTPS_PORT=str(https_port),
        ACME_DIRECTORY=pebble.directory_url,
        STORAGE_PATH=str(tmp_path / "certs"),
        REQUESTS_CA_BUNDLE=pebble.ca_bundle,
    )
    await thrust.wait_for_line(r'"Certificates installed".*"worker": ?2.*app\.test', timeout=60)
    await thrust.wait_for_line("app listening")
    context = ssl.create_default_context(cadata=pebble.roots_pem().decode())
    with stopped(thrust.process.pid):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", https_port, ssl=context, server_hostname="app.test"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200")
        assert response.endswith(f"hello on {thrust.target_port}".encode())
        redirect = await raw_request(pebble.http_port, b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert redirect.startswith(b"HTTP/1.1 301") and b"\r\nLocation: https://app.test/a\r\n" in redirect


def issued(ca: trustme.CA, host: str, directory: Path) -> CertificateFiles:
    leaf = ca.issue_cert(host)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{host}.pem"))
    return CertificateFiles.at(str(directory / f"{host}.pem"))


async def test_workers_answer_the_acme_challenges_and_serve_the_certificates_pythrust_sends(
    tmp_path, monkeypatch
):
    """Challenges taken before a worker starts reach it in its start message, later ones one by one,
    each acknowledged (so a certificate sent before a challenge is in place once it is)."""
    plain, secure = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
    for name, server in (("HTTP_PORT", plain), ("HTTPS_PORT", secure)):
        monkeypatch.setenv(name, str(server.getsockname()[1]))
    monkeypatch.setenv("TLS_DOMAIN", "app.test")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    (tmp_path / "index.html").write_bytes(b"<p>static</p>")
    log = JsonLog()
    certificates = AcmeCertificates(load(), log)  # never started: the test plays its ACME orders
    workers = ExtraWorkers(1, ["serve", str(tmp_path)], log)
    workers.mirror(certificates)
    await asyncio.to_thread(certificates.tokens.put, "early", b"early.key")
    await workers.start([plain.fileno(), secure.fileno()])
    port = plain.getsockname()[1]
    try:
        ca = trustme.CA()
        certificates.on_served(ServedCertificates((("app.test", issued(ca, "app.test", tmp_path)),)))
        await asyncio.to_thread(certificates.tokens.put, "late", b"late.key")
        await asyncio.to_thread(certificates.alpn_challenges.put, "app.test", b"alpn.key")

        for token in ("early", "late"):
            answer = await raw_request(
                port, f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()
            )
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(f"{token}.key".encode())
        context = ssl.create_default_context()
        ca.configure_trust(context)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", secure.getsockname()[1], ssl=context, server_hostname="app.test"
        )
        writer.write(b"GET /index.html HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(-1), 5)).endswith(b"<p>static</p>")
        writer.close()
        validation = ssl.create_default_context()
        validation.check_hostname, validation.verify_mode = False, ssl.CERT_NONE
        validation.set_alpn_protocols(["acme-tls/1"])
        _, writer = await asyncio.open_connection(
            "127.0.0.1", secure.getsockname()[1], ssl=validation, server_hostname="app.test"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "acme-tls/1"
        writer.close()

        await asyncio.to_thread(certificates.tokens.remove, "late")
        gone = await raw_request(
            port, b"GET /.well-known/acme-challenge/late HTTP/1.1\r\nHost: app.test\r\n\r\n"
        )
        assert gone.startswith(b"HTTP/1.1 404")
    finally:
        await workers.stop(1)
        plain.close()
        secure.close()


@pytest.mark.parametrize(
    "env",
    [{"WORKERS": "0"}, {"WORKERS": "two"}, {"WORKERS": "-1"}],
    ids=["zero", "word", "negative"],
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
