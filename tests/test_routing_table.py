"""The routing table is a value another process could be sent: the installed table pickles and comes back
equal, a health change publishes a new table (the installed one never changes), and what lives only in
this process (connection pools, by service and address) sits beside the table, not in it.

The manager, dispatcher and HTTP server run in the test's process on loopback, with real upstreams.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy.autocert import AutoCertificates
from proxy.dataplane import LocalDataPlane
from proxy.health import HealthCheckConfig
from proxy.http.request import BufferPolicy
from proxy.http.server import HttpServer
from proxy.log import JsonLog
from proxy.manager import DeployRequest, ServiceManager
from proxy.routing import RoutingTable
from proxy.service import ServiceOptions
from proxy.state import StateStore
from proxy.target import TargetState

FAST_CHECKS = HealthCheckConfig(interval=0.05, timeout=1.0)


@dataclass
class Proxy:
    manager: ServiceManager
    plane: LocalDataPlane
    url: str

    @property
    def table(self) -> RoutingTable:
        return self.plane.dispatcher.table

    async def deploy(
        self, name: str, targets: list[str], drain_timeout: float = 30.0, **options: object
    ) -> None:
        hosts = options.pop("hosts", [])
        prefixes = options.pop("path_prefixes", [])
        read_targets = tuple(options.pop("read_targets", ()))
        service_options = ServiceOptions.create(hosts, prefixes, health_check=FAST_CHECKS, **options)
        request = DeployRequest(
            name, tuple(targets), service_options, drain_timeout=drain_timeout, read_targets=read_targets
        )
        await self.manager.deploy(request, lambda event, **details: None)

    def in_flight(self, name: str, address: str) -> int:
        """Requests running on `address` for the service's deploy as it is now."""
        generation = self.manager.services[name].balancer.generation
        return self.plane.dispatcher.in_flight([(name, generation, address)])


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    log = JsonLog(fd=os.open(os.devnull, os.O_WRONLY))
    auto = AutoCertificates(log)
    plane = LocalDataPlane(auto.tokens, auto.alpn_challenges, log)
    manager = ServiceManager(plane, auto, StateStore(tmp_path / "state.json"), log)
    http = HttpServer(plane.dispatcher, log)
    server = await http.listen("127.0.0.1", 0)
    yield Proxy(manager, plane, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    await http.shutdown(1.0)
    await manager.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the proxy's state to satisfy `condition` (health checks run every 50 ms here)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_the_installed_table_pickles_and_unpickles_equal(proxy: Proxy, upstreams, tmp_path: Path):
    blue, green = upstreams
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "503.html").write_text("<p>down: {{ .Message }}</p>")
    await proxy.deploy(
        "web",
        [blue.address],
        hosts=["example.test"],
        read_targets=[green.address],
        error_pages_path=str(pages),
        log_request_headers=("User-Agent",),
        buffering=BufferPolicy(requests=True, responses=True),
    )
    await proxy.deploy("api", [green.address], path_prefixes=["/api"])
    await proxy.manager.rollout_deploy("web", (green.address,), (), 5.0, 5.0, lambda e, **d: None)
    await proxy.manager.rollout_set("web", 30, ["beta"])
    await proxy.manager.stop("api", 1.0, "back soon")

    table = proxy.table
    copy = pickle.loads(pickle.dumps(table))

    assert copy == table
    web = copy.lookup("example.test", "/").service
    assert [t.address for t in web.balancer.writers] == [blue.address]
    assert [t.state for t in web.balancer.targets] == [TargetState.HEALTHY, TargetState.HEALTHY]
    assert web.split.chooses(b"beta")
    assert copy.lookup("other.test", "/api/x").service.stopped


async def test_a_health_change_publishes_a_new_table_and_requests_follow_it(proxy: Proxy, upstreams):
    blue, green = upstreams
    await proxy.deploy("web", [blue.address, green.address])
    before = proxy.table

    green.healthy = False
    await until(lambda: proxy.table is not before)

    assert [t.state for t in before.routes()[0].balancer.targets] == [TargetState.HEALTHY] * 2
    after = proxy.table.routes()[0].balancer
    assert [t.state for t in after.targets] == [TargetState.HEALTHY, TargetState.UNHEALTHY]
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.get(proxy.url) as response:
                assert (await response.json())["upstream"] == "blue"

    green.healthy = True
    await until(lambda: proxy.table.routes()[0].balancer.all_healthy)
    async with aiohttp.ClientSession() as session:
        served = set()
        for _ in range(4):
            async with session.get(proxy.url) as response:
                served.add((await response.json())["upstream"])
    assert served == {"blue", "green"}


async def test_pausing_a_service_leaves_another_service_on_the_same_target_alone(proxy: Proxy, upstreams):
    """Pools are per service and address: a pause drains (and at its timeout cuts) only its own requests."""
    blue, _ = upstreams
    await proxy.deploy("a", [blue.address], hosts=["a.test"])
    await proxy.deploy("b", [blue.address], hosts=["b.test"])
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1", headers={"Host": "b.test"}))
        await asyncio.wait_for(blue.started.wait(), 5)
        assert proxy.in_flight("b", blue.address) == 1
        assert proxy.in_flight("a", blue.address) == 0

        await proxy.manager.pause("a", 0.1, 30.0)

        response = await slow
        assert response.status == 200
        assert await response.text() == "slow from blue"


async def test_a_redeploy_to_the_same_target_still_drains_what_ran_on_it(proxy: Proxy, upstreams):
    """Each deploy gets pools of its own, so a deploy returns only once the request started before it is
    done, even when the address did not change (a name that now points at a new container)."""
    blue, _ = upstreams
    await proxy.deploy("web", [blue.address])
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1"))
        await asyncio.wait_for(blue.started.wait(), 5)
        await proxy.deploy("web", [blue.address])
        assert slow.done(), "the deploy returned with the request still running"
        response = await slow
        assert response.status == 200 and await response.text() == "slow from blue"


async def test_a_later_drain_leaves_alone_what_a_remove_left_running(proxy: Proxy, upstreams):
    """`remove` does not drain (kamal-proxy's rule); a later deploy's drain of the same address must not cut
    the request the removed service still runs."""
    blue, green = upstreams
    await proxy.deploy("web", [blue.address])
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{proxy.url}/slow?s=1"))
        await asyncio.wait_for(blue.started.wait(), 5)
        await proxy.manager.remove("web")
        await proxy.deploy("web", [blue.address])
        await proxy.deploy("web", [green.address], drain_timeout=0.1)
        response = await slow
        assert response.status == 200, "cut by a drain that was not its own"


async def test_round_robin_goes_on_across_a_table_swap(proxy: Proxy, upstreams):
    """A swap for another service (or a health change) does not restart the turns: the two targets still
    alternate."""
    blue, green = upstreams
    await proxy.deploy("web", [blue.address, green.address], hosts=["web.test"])
    served = []
    async with aiohttp.ClientSession() as session:
        for turn in range(4):
            await proxy.deploy(f"other-{turn}", [blue.address], hosts=[f"other-{turn}.test"])
            async with session.get(proxy.url, headers={"Host": "web.test"}) as response:
                served.append((await response.json())["upstream"])
    assert served[0] != served[1] and served[1] != served[2] and served[2] != served[3], served
