"""Every `docker exec kamal-proxy kamal-proxy ...` line Kamal v2.12.0 runs
(../shared/specs/kamal-invocations.md section 2), run as written through the `kamal-proxy` name against a
real `pyproxy run`.

Only what cannot be the same here is replaced: the target (a container id there, a loopback server here)
and the paths Kamal uploads to (a temporary directory here). TLS lines keep Let's Encrypt as their CA: the
test puts a certificate for their hosts in the ACME cache first, as one issued earlier would be, so nothing
leaves this machine.
"""

from __future__ import annotations

import asyncio
import shlex
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.acme import AcmeSettings, CertificateCache
from tests.conftest import CommandResult, ProxyProcess, Upstream

KAMAL_PROXY = str(Path(sys.executable).with_name("kamal-proxy"))
KAMAL_DEFAULTS = (
    '--deploy-timeout="30s" --drain-timeout="30s" --buffer-requests --buffer-responses '
    '--log-request-header="Cache-Control" --log-request-header="Last-Modified" '
    '--log-request-header="User-Agent"'
)


async def kamal(proxy: ProxyProcess, line: str, **replace: str) -> CommandResult:
    """Run one of Kamal's lines: `line` is what follows `docker exec kamal-proxy kamal-proxy`, shell-quoted
    as Kamal sends it; `replace` swaps whole values (`target="172.1.0.2:80"` -> the test's upstream)."""
    for old, new in replace.items():
        assert old in line, f"{old} is not in the line"
        line = line.replace(old, new)
    process = await asyncio.create_subprocess_exec(
        KAMAL_PROXY,
        *shlex.split(line),
        env=proxy.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return CommandResult(process.returncode, stdout.decode(), stderr.decode())


async def get(proxy: ProxyProcess, host: str, path: str = "/", **headers: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"{proxy.url}{path}", headers={"Host": host, **headers}, allow_redirects=False
        )
        await response.read()
        return response


def seed_certificate(proxy: ProxyProcess, *hosts: str) -> trustme.CA:
    """A certificate for `hosts` in the Let's Encrypt cache kamal-proxy's name uses by default."""
    ca = trustme.CA()
    issued = ca.issue_cert(*hosts)
    cache = CertificateCache(AcmeSettings("", proxy.workdir / "config" / "kamal-proxy" / "certs"))
    chain = b"".join(pem.bytes() for pem in issued.cert_chain_pems)
    for host in hosts:
        cache.store(host, chain, issued.private_key_pem.bytes())
    return ca


@pytest.fixture
def blue(upstreams: list[Upstream]) -> Upstream:
    return upstreams[0]


async def test_deploy_with_kamals_default_flags(proxy, blue):
    result = await kamal(
        proxy, f'deploy app-web --target="172.1.0.2:80" {KAMAL_DEFAULTS}', **{"172.1.0.2:80": blue.address}
    )
    assert result.status == 0, result.stderr
    response = await get(proxy, "anything.test", **{"Cache-Control": "max-age=0"})
    assert response.status == 200
    assert (await response.json())["upstream"] == "blue"
    line = await proxy.wait_for_log("Request", service="app-web")
    assert line["req_cache_control"] == "max-age=0" and line["req_last_modified"] == ""


async def test_deploy_with_tls_and_a_host(proxy, blue):
    ca = seed_certificate(proxy, "example.com")
    line = f'deploy app-web --target="172.1.0.2:80" --host="example.com" --tls {KAMAL_DEFAULTS}'
    result = await kamal(proxy, line, **{"172.1.0.2:80": blue.address})
    assert result.status == 0, result.stderr
    assert "Certificate for example.com: cached" in result.stdout
    redirect = await get(proxy, "example.com", "/a?b=1")
    assert (redirect.status, redirect.headers["Location"]) == (301, "https://example.com/a?b=1")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connector = aiohttp.TCPConnector(ssl=context, resolver=_Loopback())
    url = f"https://example.com:{proxy.https_port}/"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
        assert (await response.json())["upstream"] == "blue"


async def test_deploy_with_tls_and_two_hosts(proxy, blue):
    seed_certificate(proxy, "example.com", "anotherexample.com")
    line = (
        f'deploy app-web --target="172.1.0.2:80" --host="example.com" --host="anotherexample.com" --tls '
        f"{KAMAL_DEFAULTS}"
    )
    result = await kamal(proxy, line, **{"172.1.0.2:80": blue.address})
    assert result.status == 0, result.stderr
    for host in ("example.com", "anotherexample.com"):
        assert (await get(proxy, host)).headers["Location"] == f"https://{host}/"


async def test_deploy_of_an_accessory(proxy, blue):
    line = f'deploy custom-busybox --target="172.1.0.2:80" --host="busybox.example.com" {KAMAL_DEFAULTS}'
    assert (await kamal(proxy, line, **{"172.1.0.2:80": blue.address})).status == 0
    assert (await get(proxy, "busybox.example.com")).status == 200
    assert (await get(proxy, "other.example.com")).status == 404


async def test_deploy_with_a_response_timeout(proxy, blue):
    line = (
        'deploy app-web --target="123:80" --deploy-timeout="6s" --drain-timeout="30s" --target-timeout="10s" '
        '--buffer-requests --buffer-responses --log-request-header="Cache-Control" '
        '--log-request-header="Last-Modified" --log-request-header="User-Agent"'
    )
    assert (await kamal(proxy, line, **{"123:80": blue.address})).status == 0
    assert (await get(proxy, "x.test", "/slow?s=0.1")).status == 200


async def test_a_deploy_kamal_sees_fail_exits_non_zero(proxy, upstreams):
    blue, green = upstreams
    assert (
        await kamal(proxy, f'deploy app-web --target="x:80" {KAMAL_DEFAULTS}', **{"x:80": blue.address})
    ).status == 0
    green.healthy = False
    failed = await kamal(
        proxy,
        'deploy app-web --target="123:80" --deploy-timeout="1s" --drain-timeout="30s"',
        **{"123:80": green.address},
    )
    assert failed.status == 1 and "failed to become healthy" in failed.stderr
    assert (await (await get(proxy, "x.test")).json())["upstream"] == "blue"


async def test_deploy_with_a_custom_certificate(proxy, blue, tmp_path):
    ca = trustme.CA()
    issued = ca.issue_cert("example.com")
    tls = tmp_path / "apps-config" / "app" / "tls" / "web"
    tls.mkdir(parents=True)
    issued.cert_chain_pems[0].write_to_path(tls / "cert.pem")
    issued.private_key_pem.write_to_path(tls / "key.pem")
    line = (
        'deploy app-web --target="172.1.0.2:80" --host="example.com" --tls '
        '--tls-certificate-path="/home/kamal-proxy/.apps-config/app/tls/web/cert.pem" '
        '--tls-private-key-path="/home/kamal-proxy/.apps-config/app/tls/web/key.pem" '
        f"{KAMAL_DEFAULTS}"
    )
    result = await kamal(
        proxy,
        line,
        **{"172.1.0.2:80": blue.address, "/home/kamal-proxy/.apps-config": str(tmp_path / "apps-config")},
    )
    assert result.status == 0, result.stderr
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connector = aiohttp.TCPConnector(ssl=context, resolver=_Loopback())
    url = f"https://example.com:{proxy.https_port}/"
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
        assert response.status == 200


async def test_deploy_with_the_integration_apps_full_flag_set(proxy, blue, tmp_path):
    pages = tmp_path / "apps-config" / "app_with_roles" / "error_pages" / "v1"
    pages.mkdir(parents=True)
    (pages / "503.html").write_text("Custom Maintenance Page: {{ .Message }}")
    line = (
        'deploy app_with_roles-web --target="abcdef123456:80" --host="localhost" --deploy-timeout="2s" '
        '--drain-timeout="2s" --health-check-interval="1s" --health-check-timeout="1s" '
        '--health-check-path="/up" --target-timeout="2s" '
        '--buffer-requests="false" --buffer-responses="false" '
        '--buffer-memory="400000" --max-request-body="40000000" --max-response-body="40000000" '
        '--forward-headers --log-request-header="Cache-Control" --log-request-header="X-Forwarded-Proto" '
        '--log-response-header="X-Request-ID" --log-response-header="X-Request-Start" '
        '--error-pages="/home/kamal-proxy/.apps-config/app_with_roles/error_pages/v1"'
    )
    result = await kamal(
        proxy,
        line,
        **{"abcdef123456:80": blue.address, "/home/kamal-proxy/.apps-config": str(tmp_path / "apps-config")},
    )
    assert result.status == 0, result.stderr
    response = await get(
        proxy, "localhost", "/respond?X-Request-Start=t%3D5", **{"X-Forwarded-Proto": "https"}
    )
    assert response.status == 200
    line = await proxy.wait_for_log("Request", service="app_with_roles-web")
    assert (line["req_x_forwarded_proto"], line["resp_x_request_start"]) == ("https", "t=5")
    stopped = await kamal(
        proxy, 'stop app_with_roles-web --drain-timeout="30s" --message="Testing Maintence Mode"'
    )
    assert stopped.status == 0
    page = await get(proxy, "localhost")
    assert (page.status, await page.text()) == (503, "Custom Maintenance Page: Testing Maintence Mode")


async def test_remove_and_remove_of_an_accessory(proxy, blue):
    for service, host in (("app-web", "a.test"), ("custom-busybox", "busybox.example.com")):
        line = f'deploy {service} --target="t:80" --host="{host}" {KAMAL_DEFAULTS}'
        assert (await kamal(proxy, line, **{"t:80": blue.address})).status == 0
    assert (await kamal(proxy, "remove app-web")).status == 0
    assert (await get(proxy, "a.test")).status == 404
    assert (await kamal(proxy, "remove custom-busybox")).status == 0
    assert (await get(proxy, "busybox.example.com")).status == 404
    # `kamal app remove` runs it again after the app is gone: kamal-proxy then fails, and Kamal ignores it.
    again = await kamal(proxy, "remove app-web")
    assert again.status == 1 and "service not found" in again.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stop app-web", ""),
        ('stop app-web --drain-timeout="10s" --message="Hi"', "Hi"),
        ('stop app-web --drain-timeout="30s"', ""),
        ('stop app-web --drain-timeout="10s" --message="Hello"', "Hello"),
    ],
)
async def test_stop_then_resume(proxy, blue, tmp_path, line, message):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "503.html").write_text(
        "{{ if .Message }}Maintenance: {{ .Message }}{{ else }}Be right back{{ end }}"
    )
    deploy = f'deploy app-web --target="t:80" {KAMAL_DEFAULTS} --error-pages="{pages}"'
    assert (await kamal(proxy, deploy, **{"t:80": blue.address})).status == 0
    result = await kamal(proxy, line)
    assert result.status == 0, result.stderr
    page = await get(proxy, "x.test")
    assert page.status == 503
    assert await page.text() == (f"Maintenance: {message}" if message else "Be right back")
    assert (await kamal(proxy, "resume app-web")).status == 0
    assert (await get(proxy, "x.test")).status == 200


class _Loopback(aiohttp.abc.AbstractResolver):
    """Every name is 127.0.0.1, so TLS can be checked against the real host name."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass
