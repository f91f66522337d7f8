"""Maintenance through the real CLI (kamal-proxy spec 8): pause holds requests, stop answers 503 with the
service's page and message, resume lets everything go on; the state survives a crash and a restart."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from tests.conftest import ProxyProcess, Upstream
from tests.h2client import H2Client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def wait_held(proxy: ProxyProcess, count: int) -> None:
    """Until `count` requests are held: the proxy says so in `list` (no sleeping on a guess)."""
    for _ in range(40):  # bounded: about 10 s
        listed = await proxy.cli("list")
        if f"paused ({count} held)" in listed.stdout:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {count} held requests: {listed.stdout}")


@pytest.mark.parametrize("workers", [1, 2])
async def test_pause_holds_requests_and_resume_lets_them_all_through(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("pause", "web")).status == 0
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(get(session, f"{proxy.url}/page/{i}")) for i in range(5)]
        await wait_held(proxy, 5)
        assert not any(task.done() for task in held)
        assert len(blue.requests) == 0, "a paused service must not forward anything"
        assert (await proxy.cli("resume", "web")).status == 0
        results = await asyncio.gather(*held)
    assert [status for status, _ in results] == [200] * 5
    assert sorted(r.path for r in blue.requests) == sorted(f"/page/{i}" for i in range(5))


async def test_a_request_held_longer_than_max_pause_gets_504(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("pause", "web", "--max-pause=300ms")).status == 0
    async with aiohttp.ClientSession() as session:
        status, _ = await asyncio.wait_for(get(session, proxy.url), 5)
    assert status == 504
    assert blue.requests == []


@pytest.mark.parametrize("workers", [1, 2])
async def test_pause_waits_for_the_requests_in_flight(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get(session, f"{proxy.url}/slow?s=1"))
        await blue.started.wait()
        pause = await proxy.cli("pause", "web")
        assert slow.done(), "pause returned while a request was still in flight"
        assert pause.status == 0
        assert (await slow)[0] == 200


@pytest.mark.parametrize("workers", [1, 2])
async def test_stop_answers_503_with_the_service_page_and_the_message(proxy, upstreams, tmp_path):
    blue, _ = upstreams
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "503.html").write_text("<p>Custom Maintenance Page: {{ .Message }}</p>\n")
    deployed = await proxy.deploy("web", blue.address, args=(f"--error-pages={pages}",))
    assert deployed.status == 0, deployed.stderr
    stopped = await proxy.cli("stop", "web", "--drain-timeout=10s", "--message=Back at <5pm>")
    assert stopped.status == 0, stopped.stderr
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url) as response:
            assert response.status == 503
            assert response.headers["Content-Type"].startswith("text/html")
            assert await response.text() == "<p>Custom Maintenance Page: Back at &lt;5pm&gt;</p>\n"
        # The health-check path stays healthy for load balancers, without reaching the app.
        for method in ("GET", "HEAD"):
            async with session.request(method, f"{proxy.url}/up?probe=1") as response:
                assert (response.status, await response.read()) == (200, b"")
        assert (await proxy.cli("resume", "web")).status == 0
        assert (await get(session, proxy.url))[0] == 200
    assert [r.path for r in blue.requests] == ["/"]


async def test_stop_without_pages_shows_the_message_on_the_built_in_page(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("stop", "web", "--message=Upgrading the database")).status == 0
    async with aiohttp.ClientSession() as session:
        status, body = await get(session, proxy.url)
    assert status == 503
    assert "Upgrading the database" in body


@pytest.mark.parametrize("workers", [1, 2])
async def test_stop_releases_held_requests_into_503(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("pause", "web")).status == 0
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(get(session, proxy.url))
        await wait_held(proxy, 1)
        assert (await proxy.cli("stop", "web", "--message=closed")).status == 0
        status, body = await held
    assert status == 503 and "closed" in body
    assert blue.requests == []


@pytest.mark.parametrize("workers", [1, 2])
async def test_list_shows_the_state_and_a_deploy_keeps_it(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("stop", "web")).status == 0
    assert (await proxy.deploy("web", green.address)).status == 0
    listed = await proxy.cli("list")
    assert "stopped" in listed.stdout
    async with aiohttp.ClientSession() as session:
        assert (await get(session, proxy.url))[0] == 503


async def test_maintenance_state_survives_kill_9_and_restart(make_proxy, upstreams, tmp_path):
    blue, green = upstreams
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "503.html").write_text("Down: {{.Message}}")
    first = await make_proxy()
    assert (
        await first.deploy("stopped-svc", blue.address, args=("--host=a.test", f"--error-pages={pages}"))
    ).status == 0
    assert (await first.deploy("paused-svc", green.address, args=("--host=b.test",))).status == 0
    assert (await first.cli("stop", "stopped-svc", "--message=soon")).status == 0
    assert (await first.cli("pause", "paused-svc", "--max-pause=200ms")).status == 0
    await first.stop(signal.SIGKILL)

    second = await make_proxy()
    listed = await second.cli("list")
    assert "stopped" in listed.stdout and "paused" in listed.stdout
    async with aiohttp.ClientSession() as session:
        async with session.get(second.url, headers={"Host": "a.test"}) as response:
            assert (response.status, await response.text()) == (503, "Down: soon")
        async with session.get(second.url, headers={"Host": "b.test"}) as response:
            assert response.status == 504  # still paused, with its max-pause
        assert (await second.cli("resume", "paused-svc")).status == 0
        async with session.get(second.url, headers={"Host": "b.test"}) as response:
            assert response.status == 200


async def test_maintenance_commands_on_an_unknown_service_fail(proxy):
    for command in (["pause", "nope"], ["stop", "nope"], ["resume", "nope"]):
        result = await proxy.cli(*command)
        assert result.status == 1
        assert "service not found" in result.stderr


async def test_an_upstream_is_never_reached_while_stopped(proxy, upstreams: list[Upstream]):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    assert (await proxy.cli("stop", "web")).status == 0
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            assert (await get(session, f"{proxy.url}/x"))[0] == 503
    assert blue.requests == []


async def test_maintenance_and_rollouts_over_http2(make_proxy, upstreams):
    blue, green = upstreams
    proxy = await make_proxy("--h2c")
    assert (await proxy.deploy("web", blue.address)).status == 0
    client = await H2Client.connect(proxy.port, "h2.test", None)
    try:
        assert (await proxy.cli("pause", "web")).status == 0
        held = client.start("/held")
        await wait_held(proxy, 1)
        assert (await proxy.cli("resume", "web")).status == 0
        response = await client.response(held)
        assert response.status == 200
        assert json.loads(response.body)["headers"]["X-Kamal-Target"] == blue.address
        assert (await proxy.cli("stop", "web", "--message=over h2")).status == 0
        stopped = await client.get("/")
        assert stopped.status == 503 and b"over h2" in stopped.body
        assert (await proxy.cli("resume", "web")).status == 0
        assert (await proxy.cli("rollout", "deploy", "web", f"--target={green.address}")).status == 0
        assert (await proxy.cli("rollout", "set", "web", "--list=canary")).status == 0
        # HTTP/2 clients may split cookies into several fields; the proxy reads them all.
        canary = await client.get("/", headers=[("cookie", "a=1"), ("cookie", "kamal-rollout=canary")])
        assert json.loads(canary.body)["upstream"] == "green"
    finally:
        await client.close()


async def test_a_deploy_with_error_pages_that_do_not_load_is_refused_and_changes_nothing(
    proxy, upstreams, tmp_path
):
    blue, green = upstreams
    good = tmp_path / "good"
    good.mkdir()
    (good / "503.html").write_text("old page {{ .Message }}")
    assert (await proxy.deploy("web", blue.address, args=(f"--error-pages={good}",))).status == 0
    unparsable = tmp_path / "unparsable"
    unparsable.mkdir()
    (unparsable / "503.html").write_text("{{ range .Items }}x{{ end }}")
    no_html = tmp_path / "no-html"
    no_html.mkdir()
    (no_html / "503.txt").write_text("text")
    for directory, why in (
        (unparsable, "503.html:1: unsupported action"),
        (no_html, "unable to load error pages"),
        (tmp_path / "missing", "unable to load error pages"),
    ):
        refused = await proxy.deploy("web", green.address, args=(f"--error-pages={directory}",))
        assert refused.status == 1, directory
        assert why in refused.stderr
    async with aiohttp.ClientSession() as session:
        assert (await get(session, proxy.url))[0] == 200
        assert (await proxy.cli("stop", "web", "--message=still")).status == 0
        assert await get(session, proxy.url) == (503, "old page still")
    assert green.requests == []


async def test_resume_does_not_wait_for_the_pause_drain(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get(session, f"{proxy.url}/slow?s=4"))
        await blue.started.wait()
        pausing = asyncio.create_task(proxy.cli("pause", "web", "--drain-timeout=20s"))
        await proxy.wait_for_log("Service paused")
        held = asyncio.create_task(get(session, f"{proxy.url}/after"))
        await wait_held(proxy, 1)
        assert (await proxy.cli("resume", "web")).status == 0
        status, _ = await asyncio.wait_for(held, 2)
        assert status == 200
        assert not slow.done(), "resume must not have waited for the drain of the pause"
        assert (await slow)[0] == 200
        assert (await pausing).status == 0


async def test_held_requests_of_a_removed_service_get_503_and_go_nowhere_else(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("app", green.address)).status == 0
    assert (await proxy.deploy("api", blue.address, args=("--path-prefix=/api",))).status == 0
    assert (await proxy.cli("pause", "api")).status == 0
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(get(session, f"{proxy.url}/api/held"))
        await wait_held(proxy, 1)
        assert (await proxy.cli("remove", "api")).status == 0
        assert (await held)[0] == 503
    assert blue.requests == [] and green.requests == []


async def test_a_held_request_with_a_huge_writer_cookie_does_not_break_resume(proxy, upstreams):
    writer, reader = upstreams
    assert (await proxy.deploy("web", writer.address, args=(f"--read-target={reader.address}",))).status == 0
    assert (await proxy.cli("pause", "web")).status == 0
    async with aiohttp.ClientSession() as session:
        plain = asyncio.create_task(get(session, f"{proxy.url}/a"))
        huge = {"Cookie": "kamal-writer=" + "9" * 4400}
        odd = asyncio.create_task(session.get(f"{proxy.url}/b", headers=huge))
        last = asyncio.create_task(get(session, f"{proxy.url}/c"))
        await wait_held(proxy, 3)
        assert (await proxy.cli("resume", "web")).status == 0
        assert (await plain)[0] == 200 and (await last)[0] == 200
        response = await odd
        assert response.status == 200
        assert (await response.json())["upstream"] == "green", "a cookie that is no time is as if absent"


async def test_bad_admin_values_are_refused_before_anything_changes(proxy, upstreams):
    blue, _ = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    connector = aiohttp.UnixConnector(path=proxy.env["PYPROXY_SOCKET"])
    async with aiohttp.ClientSession(connector=connector) as session:
        for body in (
            '{"service": "web", "max_pause": NaN}',
            '{"service": "web", "max_pause": 1e400}',
            '{"service": "web", "drain_timeout": 1e300}',
            '{"service": "web", "max_pause": true}',
        ):
            async with session.post("http://pyproxy/pause", data=body) as response:
                assert response.status == 400, body
    assert "running" in (await proxy.cli("list")).stdout
