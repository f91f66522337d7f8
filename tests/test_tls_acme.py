"""Automatic certificates end to end: a real pyproxy, a real pebble CA, HTTP-01 on the proxy's own port."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
import trustme

from proxy.acme import AcmeSettings, CertificateCache
from tests.conftest import ProxyProcess, proxy_env, raw_request
from tests.pebble import Pebble, free_port, start_pebble


async def start_proxy(
    tmp_path: Path, pebble: Pebble, started: list[ProxyProcess], workers: int = 1
) -> ProxyProcess:
    env = {**proxy_env(tmp_path), "REQUESTS_CA_BUNDLE": pebble.ca_bundle}
    running = ProxyProcess(tmp_path, env, [f"--http-port={pebble.http_port}", f"--workers={workers}"])
    await running.start()
    started.append(running)
    return running


def acme_flags(tmp_path: Path, pebble: Pebble, *flags: str) -> tuple[str, ...]:
    """Deploy flags for automatic TLS from this test's pebble, plus `flags`."""
    return (
        "--tls",
        *flags,
        f"--tls-acme-directory={pebble.directory_url}",
        f"--tls-acme-cache-path={tmp_path / 'certs'}",
    )


def acme_args(tmp_path: Path, pebble: Pebble, host: str) -> tuple[str, ...]:
    return acme_flags(tmp_path, pebble, f"--host={host}")


async def peer_issuer(port: int, host: str, cadata: str) -> str:
    """Handshake with SNI `host`, verifying against `cadata`; the issuer of the certificate served."""
    context = ssl.create_default_context(cadata=cadata)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(-1), 5)
    certificate = writer.get_extra_info("ssl_object").getpeercert()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:60]
    names = dict(pair[0] for pair in certificate["issuer"])
    return names.get("commonName") or names["organizationName"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_certificate_is_issued_served_and_reused_after_restart(
    tmp_path, pebble, acme_proxies, upstreams, workers
):
    proxy = await start_proxy(tmp_path, pebble, acme_proxies, workers)
    result = await proxy.deploy("app", upstreams[0].address, args=acme_args(tmp_path, pebble, "app.test"))
    assert result.status == 0, result.stderr
    assert "Certificate for app.test: ordering" in result.stdout
    await proxy.wait_for_log("Certificate issued", timeout=60, host="app.test")
    roots = pebble.roots_pem().decode()
    assert (await peer_issuer(proxy.https_port, "app.test", roots)).startswith("Pebble Intermediate CA")

    challenge = await raw_request(
        proxy.port, b"GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: app.test\r\n\r\n"
    )
    assert challenge.startswith(b"HTTP/1.1 404"), "challenge paths are answered, not redirected"
    page = await raw_request(proxy.port, b"GET /page HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert b"Location: https://app.test/page" in page

    await proxy.stop()
    restarted = await start_proxy(tmp_path, pebble, acme_proxies, workers)
    await restarted.wait_for_log("Restored", service="app")
    assert (await peer_issuer(restarted.https_port, "app.test", roots)).startswith("Pebble Intermediate CA")
    assert not restarted.logs("Ordering certificate"), "the cached certificate is served without a new order"
    listing = await restarted.cli("list")
    assert "app.test" in listing.stdout
    assert "Pebble Intermediate CA" in listing.stdout


async def test_expiring_certificate_keeps_serving_until_its_renewal_arrives(
    tmp_path, pebble, acme_proxies, upstreams
):
    old_ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    expiring = old_ca.issue_cert(
        "renew.test", not_before=now - datetime.timedelta(days=89), not_after=now + datetime.timedelta(days=1)
    )
    cache = CertificateCache(AcmeSettings(directory_url=pebble.directory_url, cache_root=tmp_path / "certs"))
    chain = b"".join(pem.bytes() for pem in expiring.cert_chain_pems)
    cache.store("renew.test", chain, expiring.private_key_pem.bytes())

    proxy = await start_proxy(tmp_path, pebble, acme_proxies)
    result = await proxy.deploy("app", upstreams[0].address, args=acme_args(tmp_path, pebble, "renew.test"))
    assert result.status == 0, result.stderr
    assert "Certificate for renew.test: renewing" in result.stdout
    both = old_ca.cert_pem.bytes().decode() + pebble.roots_pem().decode()
    issuers = []
    for _ in range(200):  # bounded: pebble issues in about 2 s
        issuers.append(await peer_issuer(proxy.https_port, "renew.test", both))
        if issuers[-1].startswith("Pebble"):
            break
        await asyncio.sleep(0.05)  # pacing of the client loop, not synchronisation
    assert issuers[0].startswith("trustme"), "the expiring certificate is served meanwhile"
    assert issuers[-1].startswith("Pebble Intermediate CA"), "then the renewed one, with no failed request"


@pytest.mark.parametrize("workers", [1, 2])
async def test_tls_alpn_01_is_used_when_port_80_does_not_reach_the_proxy(tmp_path, upstreams, workers):
    https_port = free_port()
    # pebble validates HTTP-01 on a port nobody listens on, TLS-ALPN-01 on the proxy's HTTPS port.
    with start_pebble(tmp_path / "pebble", http_port=free_port(), tls_port=https_port) as pebble:
        env = {**proxy_env(tmp_path), "REQUESTS_CA_BUNDLE": pebble.ca_bundle}
        proxy = ProxyProcess(tmp_path, env, [f"--https-port={https_port}", f"--workers={workers}"])
        await proxy.start()
        try:
            args = acme_args(tmp_path, pebble, "app.test")
            result = await proxy.deploy("app", upstreams[0].address, args=args)
            assert result.status == 0, result.stderr
            await proxy.wait_for_log("Certificate issued", timeout=60, host="app.test")
            fallback = proxy.logs("HTTP-01 failed, trying TLS-ALPN-01")
            assert fallback and "connection refused" in fallback[0]["error"].lower()
            roots = pebble.roots_pem().decode()
            assert (await peer_issuer(https_port, "app.test", roots)).startswith("Pebble Intermediate CA")
        finally:
            await proxy.stop()
