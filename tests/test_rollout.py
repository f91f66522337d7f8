"""Canary rollouts and read targets through the real CLI (kamal-proxy spec 7.3, 7.4)."""

from __future__ import annotations

import time

import aiohttp

from tests.conftest import ProxyProcess


def fnv1a_32(value: bytes) -> int:
    """Go's hash/fnv New32a, written out here so the test does not trust the code it checks."""
    digest = 2166136261
    for byte in value:
        digest ^= byte
        digest = (digest * 16777619) % 2**32
    return digest


async def upstream_for(session: aiohttp.ClientSession, proxy: ProxyProcess, **headers: str) -> str:
    async with session.get(proxy.url, headers=headers) as response:
        assert response.status == 200
        return (await response.json())["upstream"]


async def test_percent_rollout_follows_the_fnv1a_rule_exactly(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    deployed = await proxy.cli("rollout", "deploy", "web", f"--target={green.address}")
    assert deployed.status == 0, deployed.stderr
    assert (await proxy.cli("rollout", "set", "web", "--percent=30", "--list=vip-1,vip-2")).status == 0
    split = 0xFFFFFFFF * 30 / 100
    mismatches = []
    async with aiohttp.ClientSession() as session:
        for i in range(1000):
            value = f"user-{i}"
            expected = "green" if fnv1a_32(value.encode()) <= split else "blue"
            got = await upstream_for(session, proxy, Cookie=f"theme=dark; kamal-rollout={value}")
            if got != expected:
                mismatches.append((value, got))
        assert mismatches == []
        for vip in ("vip-1", "vip-2"):
            assert await upstream_for(session, proxy, Cookie=f"kamal-rollout={vip}") == "green"
        # Without the cookie, never the rollout.
        assert {await upstream_for(session, proxy) for _ in range(20)} == {"blue"}
        # Garbage in the cookie is as if there were none (Go's cookie parser drops such values): each
        # value below would hash into the rollout's share if it were taken as a value.
        garbage = ["kamal-rollout", "kamal-rollout="]
        for bad in ('"', "\u00e9", "\\"):
            value = next(f"u{i}{bad}" for i in range(10_000) if fnv1a_32(f"u{i}{bad}".encode()) <= split)
            garbage.append(f"kamal-rollout={value}")
        for cookie in garbage:
            assert await upstream_for(session, proxy, Cookie=cookie) == "blue", cookie
        assert await upstream_for(session, proxy, Cookie='kamal-rollout="vip-1"') == "green"


async def test_rollout_stop_sends_everyone_back_and_set_brings_the_rollout_back(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("rollout", "deploy", "web", f"--target={green.address}")).status == 0
    assert (await proxy.cli("rollout", "set", "web", "--percent=100")).status == 0
    async with aiohttp.ClientSession() as session:
        assert await upstream_for(session, proxy, Cookie="kamal-rollout=a") == "green"
        assert (await proxy.cli("rollout", "stop", "web")).status == 0
        assert await upstream_for(session, proxy, Cookie="kamal-rollout=a") == "blue"
        assert (await proxy.cli("rollout", "set", "web", "--list=a")).status == 0
        assert await upstream_for(session, proxy, Cookie="kamal-rollout=a") == "green"
        assert await upstream_for(session, proxy, Cookie="kamal-rollout=b") == "blue"


async def test_rollout_survives_a_restart(make_proxy, upstreams):
    blue, green = upstreams
    first = await make_proxy()
    assert (await first.deploy("web", blue.address)).status == 0
    assert (await first.cli("rollout", "deploy", "web", f"--target={green.address}")).status == 0
    assert (await first.cli("rollout", "set", "web", "--list=tester")).status == 0
    await first.stop()
    second = await make_proxy()
    async with aiohttp.ClientSession() as session:
        assert await upstream_for(session, second, Cookie="kamal-rollout=tester") == "green"
        assert await upstream_for(session, second, Cookie="kamal-rollout=other") == "blue"


async def test_rollout_refusals(proxy, upstreams):
    blue, green = upstreams
    for command in (
        ["rollout", "deploy", "nope", f"--target={green.address}"],
        ["rollout", "set", "nope", "--percent=5"],
        ["rollout", "stop", "nope"],
    ):
        result = await proxy.cli(*command)
        assert (result.status, "service not found" in result.stderr) == (1, True), command
    assert (await proxy.deploy("web", blue.address)).status == 0
    unset = await proxy.cli("rollout", "set", "web", "--percent=5")
    assert (unset.status, unset.stderr.strip()) == (1, "Error: rollout target not set")
    neither = await proxy.cli("rollout", "set", "web")
    assert neither.status == 2 and "percent list" in neither.stderr
    too_much = await proxy.cli("rollout", "set", "web", "--percent=101")
    assert too_much.status == 2


async def test_reads_go_to_read_targets_and_writes_stick_to_the_writers(proxy, upstreams):
    writer, reader = upstreams
    deployed = await proxy.deploy(
        "web", writer.address, args=(f"--read-target={reader.address}", "--writer-affinity-timeout=5s")
    )
    assert deployed.status == 0, deployed.stderr
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        assert await upstream_for(session, proxy) == "green"
        async with session.head(proxy.url) as response:
            assert response.status == 200
        async with session.post(proxy.url, data=b"x") as response:
            assert (await response.json())["upstream"] == "blue"
            cookie = response.cookies["kamal-writer"]
            assert cookie["path"] == "/" and cookie["httponly"]
            until = int(cookie.value)
            assert time.time() * 1000 < until <= time.time() * 1000 + 5000
        # With the cookie, reads follow the writes; a stale or garbage cookie is as if absent.
        assert await upstream_for(session, proxy, Cookie=f"kamal-writer={until}") == "blue"
        assert await upstream_for(session, proxy, Cookie="kamal-writer=1") == "green"
        assert await upstream_for(session, proxy, Cookie="kamal-writer=soon%20please") == "green"


async def test_the_app_can_decline_writer_affinity(proxy, upstreams):
    writer, reader = upstreams
    assert (await proxy.deploy("web", writer.address, args=(f"--read-target={reader.address}",))).status == 0
    # The upstream echoes ?header=value pairs as response headers (see tests/conftest.py).
    url = f"{proxy.url}/respond?X-Writer-Affinity=false"
    async with aiohttp.ClientSession() as session, session.post(url, data=b"x") as response:
        assert "kamal-writer" not in response.cookies
        assert "X-Writer-Affinity" not in response.headers


async def test_websockets_go_to_the_writers_unless_readers_accept_them(proxy, upstreams):
    writer, reader = upstreams
    assert (await proxy.deploy("web", writer.address, args=(f"--read-target={reader.address}",))).status == 0
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "blue: hi"
    assert (
        await proxy.deploy(
            "web", writer.address, args=(f"--read-target={reader.address}", "--read-target-websockets")
        )
    ).status == 0
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "green: hi"


async def test_a_read_with_the_writer_cookie_goes_to_the_writers_without_renewing_it(proxy, upstreams):
    writer, reader = upstreams
    assert (await proxy.deploy("web", writer.address, args=(f"--read-target={reader.address}",))).status == 0
    until = int(time.time() * 1000) + 60_000
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    async with session, session.get(proxy.url, headers={"Cookie": f"kamal-writer={until}"}) as response:
        assert (await response.json())["upstream"] == "blue"
        assert "kamal-writer" not in response.cookies
