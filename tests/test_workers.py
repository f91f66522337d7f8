"""`pyproxy run --workers N`: a control process and N data-plane workers on the same ports.

A stopped worker (SIGSTOP) cannot accept, so while one is stopped every new connection goes to the
other: that is how these tests put a request on the worker they mean, without guessing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.cpus import cgroup_cpu_limit
from tests.conftest import PYPROXY, ProxyProcess, Upstream, proxy_env, raw_request, strict_session
from tests.pebble import free_port
from tests.test_tls_acme import acme_args, peer_issuer, start_proxy

pytestmark = pytest.mark.parametrize("workers", [2])


@asynccontextmanager
async def stopped(proxy: ProxyProcess, pid: int):
    """The worker `pid` stopped (it accepts nothing) for the block. Once it goes on, `list` (which every
    worker answers after what it was sent before) makes sure it has caught up with the control process
    before the next connection can reach it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        assert (await proxy.cli("list")).status == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


async def replacement(proxy: ProxyProcess, number: int, old_pid: int) -> int:
    """The pid of the worker started in place of `old_pid`, once its "Worker started" line is out."""
    for _ in range(500):  # bounded: 5 s
        pid = proxy.worker_pids().get(number, old_pid)
        if pid != old_pid:
            return pid
        await asyncio.sleep(0.01)  # polling the log lines read so far, at 10 ms resolution
    raise AssertionError(f"worker {number} was not replaced")


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_one_line_and_exit_2(tmp_path, value, workers):
    for args, env in ((["--workers", value], {}), ([], {"WORKERS": value})):
        done = subprocess.run(
            [*PYPROXY, "run", *args],
            env={**proxy_env(tmp_path), **env},
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "--workers" in done.stderr, done.stderr
        assert done.stdout == ""


async def test_both_workers_serve_and_a_request_on_each_is_drained_before_the_deploy_returns(
    proxy: ProxyProcess, upstreams: list[Upstream]
):
    blue, green = upstreams
    assert proxy.logs("Server started")[0]["workers"] == 2
    first, second = proxy.worker_pids()[1], proxy.worker_pids()[2]
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        slow = []
        for busy, idle in ((first, second), (second, first)):
            async with stopped(proxy, idle):
                before = len(blue.requests)
                blue.started.clear()
                slow.append(asyncio.create_task(session.get(f"{proxy.url}/slow?s=1.5")))
                await asyncio.wait_for(blue.started.wait(), 5)
                assert await status_of(session, f"{proxy.url}/who") == 200, f"worker {busy} serves alone"
                assert len(blue.requests) == before + 1
        result = await proxy.deploy("web", green.address)
        assert result.status == 0, result.stderr
        assert "Draining 2 in-flight request(s)" in result.stdout
        assert all(task.done() for task in slow), "the deploy returned before a worker's request ended"
        assert [response.status for response in await asyncio.gather(*slow)] == [200, 200]
        for pid in (first, second):
            async with stopped(proxy, pid), session.get(proxy.url) as response:
                assert (await response.json())["upstream"] == "green"


async def test_a_deploy_with_a_hung_worker_returns_at_the_drain_timeout_naming_it(
    proxy: ProxyProcess, upstreams: list[Upstream]
):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    hung = proxy.worker_pids()[2]
    os.kill(hung, signal.SIGSTOP)
    started = time.monotonic()
    result = await proxy.deploy("web", green.address, args=("--drain-timeout=1s",))
    elapsed = time.monotonic() - started
    assert result.status == 0, result.stderr
    assert f"worker 2 (pid {hung}) did not confirm" in result.stdout
    assert 1.0 <= elapsed < 4.0, elapsed
    await replacement(proxy, 2, hung)  # the hung worker is replaced
    async with aiohttp.ClientSession() as session, session.get(proxy.url) as response:
        assert (await response.json())["upstream"] == "green"


async def test_workers_exit_when_the_control_process_is_killed_and_a_restart_serves_the_state(
    make_proxy, upstreams: list[Upstream]
):
    blue, _ = upstreams
    port = free_port()
    first = await make_proxy(f"--http-port={port}")
    assert (await first.deploy("web", blue.address)).status == 0
    pids = list(first.worker_pids().values())
    first.process.kill()
    await first.process.wait()
    for _ in range(100):  # bounded: about 5 s
        if not any(alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "workers must not serve a table nobody can change"
    second = await make_proxy(f"--http-port={port}")  # the port is free again
    await second.wait_for_log("Restored", service="web")
    async with aiohttp.ClientSession() as session, session.get(second.url) as response:
        assert (await response.json())["upstream"] == "blue"


async def test_access_log_lines_of_two_workers_never_interleave(proxy: ProxyProcess, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    long_path = "/" + "x" * 1500  # lines of about 2 KB: a few fill a pipe's atomic write

    async def client() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(150):
                assert await status_of(session, proxy.url + long_path) == 200

    await asyncio.gather(*(client() for _ in range(6)))
    await proxy.wait_for_log("Request", timeout=5)
    for _ in range(100):  # bounded: the last lines are flushed within a sweep (0.1 s)
        if len(proxy.logs("Request")) >= 900:
            break
        await asyncio.sleep(0.05)
    assert not proxy.logs("non-json output"), proxy.logs("non-json output")[:2]
    assert len(proxy.logs("Request")) == 900


async def test_metrics_sum_every_worker(make_proxy, upstreams: list[Upstream]):
    metrics_port = free_port()
    proxy = await make_proxy(f"--metrics-port={metrics_port}")
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    pids = proxy.worker_pids()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for pid in pids.values():
            async with stopped(proxy, pid):  # each worker serves 5 of the 10
                for _ in range(5):
                    assert await status_of(session, proxy.url) == 200
        async with stopped(proxy, pids[1]):
            slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1"))
            await asyncio.wait_for(blue.started.wait(), 5)
        async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = await response.text()
        await slow
    assert 'kamal_proxy_http_requests_total{method="GET",service="web",status="200"} 10.0' in text
    assert 'kamal_proxy_http_in_flight_requests{service="web"} 1.0' in text


async def test_a_certificate_ordered_by_the_control_process_is_served_by_both_workers(
    tmp_path, pebble, acme_proxies, upstreams, workers
):
    proxy = await start_proxy(tmp_path, pebble, acme_proxies, workers)
    pids = proxy.worker_pids()
    async with stopped(proxy, pids[1]):  # the CA's HTTP-01 request can only reach worker 2
        result = await proxy.deploy("app", upstreams[0].address, args=acme_args(tmp_path, pebble, "app.test"))
        assert result.status == 0, result.stderr
        await proxy.wait_for_log("Certificate issued", timeout=60, host="app.test")
        roots = pebble.roots_pem().decode()
        assert (await peer_issuer(proxy.https_port, "app.test", roots)).startswith("Pebble")
    async with stopped(proxy, pids[2]):
        assert (await peer_issuer(proxy.https_port, "app.test", roots)).startswith("Pebble")


async def test_operator_certificates_and_redirects_on_both_workers(tmp_path, make_proxy, upstreams):
    ca = trustme.CA()
    issued = ca.issue_cert("shop.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    proxy = await make_proxy()
    args = ("--host=shop.test", "--tls", f"--tls-certificate-path={cert}", f"--tls-private-key-path={key}")
    assert (await proxy.deploy("shop", upstreams[0].address, args=args)).status == 0
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    for pid in proxy.worker_pids().values():
        async with stopped(proxy, pid):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.https_port, ssl=context, server_hostname="shop.test"
            )
            writer.write(b"GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["upstream"] == "blue"
            redirect = await raw_request(proxy.port, b"GET /x HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            assert b"Location: https://shop.test/x" in redirect


def test_the_default_is_the_cpus_this_process_may_use(tmp_path, workers):
    code = "from proxy.cpus import usable_cpus; print(usable_cpus())"
    env = {**proxy_env(tmp_path)}
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert pinned.stdout.strip() == "1", pinned.stderr
    unpinned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert int(unpinned.stdout) == len(os.sched_getaffinity(0))


def test_a_cgroup_cpu_quota_caps_the_default(tmp_path, workers):
    own = tmp_path / "cgroup"
    own.write_text("0::/app/web\n")
    root = tmp_path / "fs"
    (root / "app" / "web").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "app" / "cpu.max").write_text("150000 100000\n")  # docker run --cpus=1.5
    (root / "app" / "web" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, own) == 1.5
    own.write_text("1:cpu:/\n")  # cgroup v1
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(root, own) is None
    (root / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(root, own) == 3.0


async def test_a_worker_killed_under_load_loses_only_its_connections_and_a_deploy_completes(
    proxy: ProxyProcess, upstreams: list[Upstream]
):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    survivor, victim = proxy.worker_pids()[1], proxy.worker_pids()[2]
    done = asyncio.Event()

    async def client(keep_alive: bool) -> list[tuple[float, bool]]:
        """(when it ended, succeeded) for each request, until told to stop (bounded: 3000)."""
        outcomes = []
        async with strict_session(force_close=not keep_alive) as session:
            for _ in range(3000):
                if done.is_set():
                    break
                try:
                    ok = await status_of(session, f"{proxy.url}/load") == 200
                except aiohttp.ClientError:
                    ok = False
                outcomes.append((time.monotonic(), ok))
        return outcomes

    load = [asyncio.create_task(client(keep_alive)) for keep_alive in (True, True, True, False, False)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while len(blue.requests) < 200:  # bounded by the load's own count
            await asyncio.sleep(0.01)
        async with stopped(proxy, victim):  # a request to drain, on the worker that lives
            slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1.5"))
            await asyncio.wait_for(blue.started.wait(), 5)
        deploying = asyncio.create_task(proxy.deploy("web", green.address))
        for _ in range(500):  # bounded: 5 s; once the load reaches green, the deploy is draining blue
            if green.requests:
                break
            await asyncio.sleep(0.01)
        assert green.requests and not deploying.done()
        os.kill(victim, signal.SIGKILL)
        killed_at = started = time.monotonic()
        fresh = await replacement(proxy, 2, victim)
        async with stopped(proxy, survivor):
            assert await status_of(session, f"{proxy.url}/who") == 200, "the new worker serves"
            served_after = time.monotonic() - started
        result = await deploying
        assert slow.done(), "the deploy returned before the drained request ended"
        assert (await slow).status == 200
        done.set()
        outcomes = await asyncio.gather(*load)
    assert result.status == 0, result.stderr
    assert "Drained\n" in result.stdout  # the slow request and any load request on blue: none cut
    for requests in outcomes:  # a client has one connection at a time: the kill can break one request
        failures = [ended for ended, ok in requests if not ok]
        assert len(failures) <= 1 and all(ended >= killed_at for ended in failures), requests
        assert requests[-1][1], "every request after the lost one succeeds"
    assert sum(len(requests) for requests in outcomes) > 400
    assert served_after < 1.0, f"the new worker served {served_after:.2f} s after the kill"  # 0.2-0.3 s here
    for pid in (survivor, fresh):
        async with (
            stopped(proxy, pid),
            aiohttp.ClientSession() as session,
            session.get(proxy.url) as response,
        ):
            assert (await response.json())["upstream"] == "green"
