"""Smoke test of the pydeploy test bed: what the deployer's tests rely on works, end to end.

Each host answers SSH with the bed's key and runs its own dockerd; a host logs in to the registry, pulls
the test app and serves its /up; the pyproxy image runs on a host as non-root on :80, and
`docker exec <container> kamal-proxy` drives it, as the deployer and Kamal will.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

asyncssh = pytest.importorskip("asyncssh", reason="asyncssh is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.timeout(600)  # the first test may pay for the bed's first bring-up (~1-2 min)


@pytest.fixture
def bed(testbed: Testbed) -> Iterator[Testbed]:  # noqa: F811
    """The bed, with its hosts made fresh again after the test."""
    yield testbed
    testbed.reset()


async def run(bed: Testbed, host: str, command: str, input: str | None = None) -> str:
    """Run `command` on `host` over SSH, as the deployer logs in; its stdout, or fail with its stderr."""
    async with asyncssh.connect(
        host, username=bed.ssh_user, client_keys=[str(bed.ssh_key)], known_hosts=str(bed.ssh_known_hosts)
    ) as conn:
        result = await conn.run(command, input=input)
    assert result.exit_status == 0, f"{host}: `{command}` exited {result.exit_status}: {result.stderr}"
    return str(result.stdout)


async def login(bed: Testbed, host: str) -> None:
    command = f"docker login -u {bed.registry_user} --password-stdin {bed.registry}"
    await run(bed, host, command, input=bed.registry_password)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def until(command: str, seconds: int = 30) -> str:
    """A shell loop that retries `command` every 0.2 s, failing after `seconds`."""
    return f"timeout {seconds} sh -c 'until {command}; do sleep 0.2; done'"


async def test_each_host_answers_ssh_with_its_own_dockerd(bed: Testbed) -> None:
    # The daemon's name is the hostname of the UTS namespace it runs in: each host has a daemon of its own.
    outputs = await asyncio.gather(
        *(run(bed, host, "hostname; docker info --format '{{.Name}}'") for host in bed.hosts)
    )
    names = [f"h{i}" for i in range(1, len(bed.hosts) + 1)]
    assert [out.split() for out in outputs] == [[name, name] for name in names]


async def test_host_pulls_the_app_from_the_registry_and_serves_it(bed: Testbed) -> None:
    host = bed.hosts[-1]
    await login(bed, host)
    await run(bed, host, f"docker pull -q {bed.app('v1')} && docker pull -q {bed.app('v3')}")
    await run(bed, host, f"docker run -d --name app-v1 -p 80:80 {bed.app('v1')}")
    await run(bed, host, f"docker run -d --name app-v3 -p 8080:80 {bed.app('v3')}")
    assert (await run(bed, host, until("curl -sf http://127.0.0.1/up"))).strip() == "OK"
    assert (await run(bed, host, "docker exec app-v1 wget -qO- http://127.0.0.1/up")).strip() == "OK"
    await run(bed, host, until("curl -s http://127.0.0.1:8080/version"))
    assert get(f"http://{host}/version") == (200, "v1")  # reachable from here, as from the other hosts
    assert get(f"http://{host}:8080/version") == (200, "v3")
    assert get(f"http://{host}:8080/up")[0] == 404  # v3 never becomes healthy


async def test_pyproxy_image_runs_on_a_host_and_takes_deploys(bed: Testbed) -> None:
    host = bed.hosts[0]
    await login(bed, host)
    await run(bed, host, f"docker pull -q {bed.proxy_image} && docker network create smoke")
    await run(bed, host, f"docker run -d --name web-v2 --network smoke {bed.app('v2')}")
    await run(
        bed,
        host,
        "docker run -d --name pyproxy --network smoke -p 80:80 -p 443:443 --health-interval 1s"
        f" -v pyproxy-config:/home/kamal-proxy/.config/kamal-proxy {bed.proxy_image}",
    )
    await run(bed, host, until("docker exec pyproxy kamal-proxy list >/dev/null 2>&1"))
    await run(bed, host, "docker exec pyproxy kamal-proxy deploy web --target web-v2:80")
    assert "web-v2:80" in await run(bed, host, "docker exec pyproxy kamal-proxy list")
    assert get(f"http://{host}/version") == (200, "v2")
    await run(bed, host, until("docker inspect -f '{{.State.Health.Status}}' pyproxy | grep -qx healthy"))
    assert (await run(bed, host, "docker exec pyproxy id -un")).strip() == "kamal-proxy"
