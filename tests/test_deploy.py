"""Deploys through the real CLI: zero downtime under load, draining, health-check failures, state."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.conftest import ProxyProcess, Upstream, strict_session


async def upstream_of(session: aiohttp.ClientSession, url: str, headers: dict | None = None) -> str:
    async with session.get(url, headers=headers) as response:
        assert response.status == 200
        return (await response.json())["upstream"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_twenty_deploys_under_load_lose_no_request(proxy: ProxyProcess, upstreams: list[Upstream]):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    results: list[tuple[float, int, str]] = []  # (started, status, upstream)
    stop = asyncio.Event()

    async def client(force_close: bool) -> None:
        async with strict_session(force_close=force_close, limit=1) as session:
            for _ in range(100_000):  # bounded; ends when the deploys are done
                if stop.is_set():
                    return
                started = time.monotonic()
                async with session.get(proxy.url) as response:
                    body = await response.json() if response.status == 200 else {}
                    results.append((started, response.status, body.get("upstream", "")))

    clients = [asyncio.create_task(client(force_close=i % 2 == 1)) for i in range(4)]
    deploys: list[tuple[float, float, str]] = []  # (started, returned, upstream)
    for i in range(20):
        target = green if i % 2 == 0 else blue
        started = time.monotonic()
        result = await proxy.deploy("web", target.address)
        assert result.status == 0, result.stderr
        deploys.append((started, time.monotonic(), target.name))
    stop.set()
    await asyncio.gather(*clients)

    assert len(results) > 200
    assert {status for _, status, _ in results} == {200}
    for k, (_, returned, name) in enumerate(deploys):
        next_start = deploys[k + 1][0] if k + 1 < len(deploys) else float("inf")
        served = {up for started, _, up in results if returned <= started < next_start}
        assert served <= {name}, f"after deploy {k} returned, requests went to {served}"


@pytest.mark.parametrize("workers", [1, 2])
async def test_deploy_waits_for_an_in_flight_request_to_finish(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=2"))
        await asyncio.wait_for(blue.started.wait(), 5)
        result = await proxy.deploy("web", green.address)
        assert result.status == 0, result.stderr
        assert slow.done(), "deploy must return only after the old target's request finished"
        response = slow.result()
        assert response.status == 200
        assert await response.text() == "slow from blue"
        assert "Draining 1 in-flight request" in result.stdout
        assert await upstream_of(session, proxy.url) == "green"


@pytest.mark.parametrize("workers", [1, 2])
async def test_drain_timeout_cuts_long_requests(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=3"))
        await asyncio.wait_for(blue.started.wait(), 5)
        started = time.monotonic()
        result = await proxy.deploy("web", green.address, args=("--drain-timeout=500ms",))
        elapsed = time.monotonic() - started
        assert result.status == 0, result.stderr
        assert "1 request(s) cut at the drain timeout" in result.stdout
        response = await slow
        assert response.status == 504
        assert elapsed < 2.5, "the deploy returns at the drain timeout, long before the 3 s request ends"


async def test_unhealthy_target_fails_the_deploy_and_the_old_target_keeps_serving(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    green.healthy = False
    result = await proxy.deploy("web", green.address, args=("--deploy-timeout=1s",))
    assert result.status != 0
    assert "failed to become healthy within configured timeout (1s)" in result.stderr
    assert green.address in result.stderr
    assert "503" in result.stderr, "the last health-check result is shown"
    async with aiohttp.ClientSession() as session:
        assert await upstream_of(session, proxy.url) == "blue"


async def test_refused_target_names_the_connection_error(proxy, upstreams):
    _blue, green = upstreams
    await green.stop()
    result = await proxy.deploy("web", green.address, args=("--deploy-timeout=500ms",))
    assert result.status == 1
    assert f"{green.address}: GET http://{green.address}/up failed" in result.stderr


async def test_force_skips_the_health_wait(proxy, upstreams):
    blue, _ = upstreams
    blue.healthy = False
    result = await proxy.deploy("web", blue.address, args=("--force", "--deploy-timeout=100ms"))
    assert result.status == 0, result.stderr
    async with aiohttp.ClientSession() as session, session.get(proxy.url) as response:
        assert response.status == 503  # installed, but no healthy target yet
    blue.healthy = True


async def test_several_targets_share_the_load(proxy, upstreams):
    blue, green = upstreams
    result = await proxy.cli(
        "deploy", "web", f"--target={blue.address},{green.address}", "--health-check-interval=100ms"
    )
    assert result.status == 0, result.stderr
    async with aiohttp.ClientSession() as session:
        seen = [await upstream_of(session, proxy.url) for _ in range(6)]
    assert seen.count("blue") == 3
    assert seen.count("green") == 3


async def test_remove_takes_effect_at_once(proxy, upstreams):
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    result = await proxy.cli("remove", "web")
    assert result.status == 0, result.stderr
    async with aiohttp.ClientSession() as session, session.get(proxy.url) as response:
        assert response.status == 404
    missing = await proxy.cli("rm", "web")
    assert missing.status == 1
    assert missing.stderr.strip() == "Error: service not found: web"


async def test_list_shows_services_hosts_and_targets(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address, args=("--host=a.test,b.test",))).status == 0
    assert (await proxy.deploy("api", green.address, args=("--path-prefix=/api",))).status == 0
    result = await proxy.cli("list")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Service", "Host", "Path", "Target", "State", "TLS"]
    assert lines[1].split()[:3] == ["api", "*", "/api"]
    assert lines[2].split()[:3] == ["web", "a.test,b.test", "/"]
    assert f"{blue.address} (healthy)" in lines[2]


async def test_state_survives_kill_9(make_proxy, upstreams):
    blue, green = upstreams
    first = await make_proxy()
    assert (await first.deploy("web", blue.address, args=("--host=web.test",))).status == 0
    assert (await first.deploy("api", green.address, args=("--path-prefix=/api",))).status == 0
    first.process.send_signal(signal.SIGKILL)
    await first.process.wait()

    second = await make_proxy()
    async with aiohttp.ClientSession() as session:
        async with session.get(second.url, headers={"Host": "web.test"}) as response:
            assert (await response.json())["upstream"] == "blue"
        async with session.get(f"{second.url}/api/x") as response:
            info = await response.json()
            assert info["upstream"] == "green"
            assert info["path"] == "/x"
    await second.wait_for_log("Restored", service="web")


async def test_deploy_conflicting_with_another_service_is_refused(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address, args=("--host=app.test",))).status == 0
    result = await proxy.deploy("other", green.address, args=("--host=app.test",))
    assert result.status == 1
    assert "host settings conflict with another service" in result.stderr
    assert '"web"' in result.stderr
    async with aiohttp.ClientSession() as session:
        assert await upstream_of(session, proxy.url, headers={"Host": "app.test"}) == "blue"
