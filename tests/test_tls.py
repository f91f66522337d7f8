"""HTTPS with the operator's certificates: SNI, refusals, redirects, and bad handshakes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.conftest import ProxyProcess, raw_request


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(ca: trustme.CA, directory: Path, *hosts: str) -> tuple[str, str]:
    cert = ca.issue_cert(*hosts)
    cert_path, key_path = directory / f"{hosts[0]}.crt", directory / f"{hosts[0]}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        cert_path.write_bytes(cert_path.read_bytes() + pem.bytes())
    return str(cert_path), str(key_path)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def deploy_tls(proxy: ProxyProcess, ca: trustme.CA, target: str, *hosts: str, args: tuple = ()):
    cert, key = write_pair(ca, proxy.workdir, *hosts)
    host_flags = tuple(f"--host={h}" for h in hosts)
    result = await proxy.deploy(
        "secure",
        target,
        args=("--tls", f"--tls-certificate-path={cert}", f"--tls-private-key-path={key}", *host_flags, *args),
    )
    assert result.status == 0, result.stderr
    return result


async def https_get(proxy: ProxyProcess, ca: trustme.CA, host: str, path: str = "/", headers=None):
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"https://127.0.0.1:{proxy.https_port}{path}",
            ssl=client_context(ca),
            server_hostname=host,
            headers={"Host": host, **(headers or {})},
            allow_redirects=False,
        ) as response,
    ):
        return response.status, await response.json() if response.status == 200 else await response.text()


async def test_operator_certificate_is_served_for_its_host(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    status, body = await https_get(proxy, ca, "app.test", "/x?q=1", {"X-Forwarded-For": "6.6.6.6"})
    assert status == 200
    assert body["upstream"] == "blue"
    assert body["path"] == "/x?q=1"
    assert body["headers"]["X-Forwarded-Proto"] == "https"
    assert body["headers"]["X-Forwarded-For"] == "127.0.0.1", (
        "with TLS pyproxy is the edge: client values dropped"
    )
    listing = await proxy.cli("list")
    assert listing.stdout.splitlines()[1].split()[-1] == "yes"


async def test_unknown_server_name_fails_the_handshake(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    with pytest.raises(aiohttp.ClientConnectorError):
        await https_get(proxy, ca, "other.test")


async def test_client_without_sni_gets_the_default_certificate(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    context = client_context(ca)
    context.check_hostname = False
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.https_port, ssl=context, server_hostname=""
    )
    certificate = writer.get_extra_info("ssl_object").getpeercert()
    writer.close()
    assert ("DNS", "app.test") in certificate["subjectAltName"]


async def test_mismatched_or_missing_certificate_is_refused_at_deploy(proxy, upstreams, ca, tmp_path):
    cert, _ = write_pair(ca, tmp_path, "app.test")
    _, other_key = write_pair(ca, tmp_path, "other.test")

    async def deploy_pair(certificate: str, key: str):
        flags = (
            "--tls",
            "--host=app.test",
            f"--tls-certificate-path={certificate}",
            f"--tls-private-key-path={key}",
        )
        return await proxy.deploy("secure", upstreams[0].address, args=flags)

    result = await deploy_pair(cert, other_key)
    assert result.status == 1
    assert "unable to load certificate: the private key does not match the certificate" in result.stderr
    result = await deploy_pair(f"{tmp_path}/nope.crt", other_key)
    assert result.status == 1
    assert "nope.crt: no such file" in result.stderr
    assert (await proxy.cli("list")).stdout.count("\n") == 1, "nothing was deployed"


async def test_http_is_redirected_to_https_keeping_path_and_query(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    response = await raw_request(
        proxy.port, b"POST /a/b?c=d&e HTTP/1.1\r\nHost: app.test:8080\r\nContent-Length: 0\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"\r\nLocation: https://app.test/a/b?c=d&e\r\n" in response


async def test_redirect_can_be_turned_off(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test", args=("--tls-redirect=false",))
    response = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200")


async def test_canonical_host_redirects_other_hosts_in_one_hop(proxy, upstreams, ca):
    await deploy_tls(
        proxy, ca, upstreams[0].address, "app.test", "www.app.test", args=("--canonical-host=app.test",)
    )
    response = await raw_request(proxy.port, b"GET /p?q HTTP/1.1\r\nHost: www.app.test\r\n\r\n")
    assert b"\r\nLocation: https://app.test/p?q\r\n" in response
    status, _ = await https_get(proxy, ca, "www.app.test")
    assert status == 301
    status, _body = await https_get(proxy, ca, "app.test")
    assert status == 200


async def test_tls_request_for_a_service_without_tls_gets_503(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    assert (await proxy.deploy("plain", upstreams[1].address, args=("--host=plain.test",))).status == 0
    context = client_context(ca)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.https_port, ssl=context, server_hostname="app.test"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 503")


async def test_garbage_instead_of_a_client_hello_is_dropped(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    response = await raw_request(proxy.https_port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert b"200 OK" not in response
    status, _ = await https_get(proxy, ca, "app.test")
    assert status == 200, "other clients are not affected"


async def test_handshake_that_never_finishes_is_cut(make_proxy, upstreams):
    proxy = await make_proxy("--header-timeout=300ms")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.https_port)
    writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()


async def test_tls_service_survives_a_restart(make_proxy, upstreams, ca):
    first = await make_proxy()
    await deploy_tls(first, ca, upstreams[0].address, "app.test")
    await first.stop()
    second = await make_proxy()
    status, body = await https_get(second, ca, "app.test")
    assert (status, body["upstream"]) == (200, "blue")


async def test_sub_path_service_follows_the_tls_of_its_hosts_root_service(proxy, upstreams, ca):
    await deploy_tls(proxy, ca, upstreams[0].address, "app.test")
    api = await proxy.deploy("api", upstreams[1].address, args=("--host=app.test", "--path-prefix=/api"))
    assert api.status == 0, api.stderr
    status, body = await https_get(proxy, ca, "app.test", "/api/x")
    assert (status, body["upstream"], body["path"]) == (200, "green", "/x")
    response = await raw_request(proxy.port, b"GET /api/x HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert b"\r\nLocation: https://app.test/api/x\r\n" in response


async def test_canonical_host_compares_hosts_without_their_port(proxy, upstreams):
    result = await proxy.deploy("web", upstreams[0].address, args=("--canonical-host=[::1]",))
    assert result.status == 0, result.stderr
    same = await raw_request(proxy.port, b"GET /p HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n")
    assert same.startswith(b"HTTP/1.1 200"), "[::1]:8080 is the canonical host [::1]: no redirect loop"
    other = await raw_request(proxy.port, b"GET /p HTTP/1.1\r\nHost: other.test:8080\r\n\r\n")
    assert b"\r\nLocation: http://[::1]/p\r\n" in other
