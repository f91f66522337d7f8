"""ACME issuance against a real pebble CA, the certificate cache layout, and the certificate helpers."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from proxy.acme import (
    ACCOUNT_KEY_FILE,
    AcmeError,
    AcmeIssuer,
    AcmeSettings,
    CertificateCache,
    Http01Tokens,
    expires_at,
    issuer_name,
    needs_renewal,
)
from tests.pebble import Pebble, free_port, start_pebble

ISSUE_TIMEOUT = 30  # pebble issues in about 2 s; this only bounds a hang
EAB_KID = "kid-1"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
WRONG_EAB_KEY = "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH"


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with start_pebble(tmp_path_factory.mktemp("pebble")) as running:
        yield running


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    with start_pebble(tmp_path_factory.mktemp("pebble-eab"), eab_keys={EAB_KID: EAB_KEY}) as running:
        yield running


@asynccontextmanager
async def http01_responder(port: int, tokens: Http01Tokens) -> AsyncIterator[None]:
    """What the proxy's HTTP listener does for challenges: answer from the tokens, else 404."""

    async def answer(request: web.Request) -> web.Response:
        key_authorization = tokens.get(request.match_info["token"])
        if key_authorization is None:
            return web.Response(status=404)
        return web.Response(body=key_authorization)

    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


class Events:
    """Collects what the issuer logs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, msg: str, **attrs: Any) -> None:
        self.lines.append((msg, attrs))

    def named(self, msg: str) -> list[dict[str, Any]]:
        return [attrs for line, attrs in self.lines if line == msg]


def settings_for(ca: Pebble, cache_root: Path, **extra: Any) -> AcmeSettings:
    return AcmeSettings(
        directory_url=ca.directory_url, cache_root=cache_root, ca_bundle=ca.ca_bundle, **extra
    )


async def issue(
    ca: Pebble, settings: AcmeSettings, host: str, log: Events | None = None
) -> tuple[bytes, bytes]:
    tokens = Http01Tokens()
    async with http01_responder(ca.http_port, tokens):
        issuer = AcmeIssuer(settings, tokens, log)
        return await asyncio.wait_for(issuer.issue(host), ISSUE_TIMEOUT)


def assert_valid_for(chain_pem: bytes, host: str, roots_pem: bytes) -> None:
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    store = Store(x509.load_pem_x509_certificates(roots_pem))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
    verifier.verify(leaf, intermediates)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_issues_a_certificate_that_verifies_and_caches_it(pebble: Pebble, tmp_path: Path) -> None:
    settings = settings_for(pebble, tmp_path)
    chain_pem, key_pem = await issue(pebble, settings, "app.test")

    assert_valid_for(chain_pem, "app.test", pebble.roots_pem())
    assert issuer_name(chain_pem).startswith("Pebble Intermediate CA")
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    cache_dir = tmp_path / hashlib.sha256(pebble.directory_url.encode()).hexdigest()
    assert CertificateCache(settings).dir == cache_dir
    assert mode(cache_dir) == 0o700
    assert sorted(p.name for p in cache_dir.iterdir()) == [ACCOUNT_KEY_FILE, "app.test"]
    assert all(mode(p) == 0o600 for p in cache_dir.iterdir())
    assert (cache_dir / "app.test").read_bytes() == key_pem + chain_pem
    assert CertificateCache(settings).load("app.test") == (chain_pem, key_pem)


async def test_a_restarted_issuer_reuses_the_cached_account(pebble: Pebble, tmp_path: Path) -> None:
    settings = settings_for(pebble, tmp_path)
    first, second = Events(), Events()
    await issue(pebble, settings, "first.test", first)
    account_key = (CertificateCache(settings).dir / ACCOUNT_KEY_FILE).read_bytes()

    chain_pem, _ = await issue(pebble, settings, "second.test", second)

    assert_valid_for(chain_pem, "second.test", pebble.roots_pem())
    assert (CertificateCache(settings).dir / ACCOUNT_KEY_FILE).read_bytes() == account_key
    [registered] = first.named("ACME account registered")
    assert second.named("ACME account registered") == []
    assert second.named("ACME account reused") == [registered]


async def test_concurrent_requests_for_one_host_share_one_order(pebble: Pebble, tmp_path: Path) -> None:
    tokens, events = Http01Tokens(), Events()
    issuer = AcmeIssuer(settings_for(pebble, tmp_path), tokens, events)
    async with http01_responder(pebble.http_port, tokens):
        results = await asyncio.wait_for(
            asyncio.gather(issuer.issue("shared.test"), issuer.issue("shared.test")), ISSUE_TIMEOUT
        )
    assert results[0] == results[1]
    assert len(events.named("Ordering certificate")) == 1


async def test_an_unanswered_challenge_fails_with_the_cas_reason(pebble: Pebble, tmp_path: Path) -> None:
    issuer = AcmeIssuer(settings_for(pebble, tmp_path), Http01Tokens())
    async with http01_responder(pebble.http_port, Http01Tokens()):  # knows none of the issuer's tokens
        with pytest.raises(AcmeError) as failure:
            await asyncio.wait_for(issuer.issue("unanswered.test"), ISSUE_TIMEOUT)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("certificate for unanswered.test: challenge failed: ")
    assert "404" in message
    assert CertificateCache(issuer.settings).load("unanswered.test") is None


async def test_an_unreachable_ca_is_an_acme_error(tmp_path: Path) -> None:
    settings = AcmeSettings(directory_url=f"https://127.0.0.1:{free_port()}/dir", cache_root=tmp_path)
    issuer = AcmeIssuer(settings, Http01Tokens())
    reason = (
        r"^certificate for app\.test: cannot reach the ACME CA at https://127\.0\.0\.1:\d+/dir: .*refused$"
    )
    with pytest.raises(AcmeError, match=reason):
        await asyncio.wait_for(issuer.issue("app.test"), ISSUE_TIMEOUT)


async def test_a_wrong_eab_key_is_refused(eab_pebble: Pebble, tmp_path: Path) -> None:
    settings = settings_for(eab_pebble, tmp_path, eab_kid=EAB_KID, eab_hmac_key=WRONG_EAB_KEY)
    with pytest.raises(AcmeError, match=r"^certificate for eab\.test: the CA refused the ACME account: \S"):
        await issue(eab_pebble, settings, "eab.test")


async def test_a_missing_eab_is_refused_when_the_ca_requires_one(eab_pebble: Pebble, tmp_path: Path) -> None:
    with pytest.raises(AcmeError, match=r"^certificate for eab\.test: the CA refused the ACME account: \S"):
        await issue(eab_pebble, settings_for(eab_pebble, tmp_path), "eab.test")


async def test_the_right_eab_key_works(eab_pebble: Pebble, tmp_path: Path) -> None:
    settings = settings_for(eab_pebble, tmp_path, eab_kid=EAB_KID, eab_hmac_key=EAB_KEY)
    chain_pem, _ = await issue(eab_pebble, settings, "eab.test")
    assert_valid_for(chain_pem, "eab.test", eab_pebble.roots_pem())


def test_cache_dir_is_keyed_by_the_directory_string(tmp_path: Path) -> None:
    production = CertificateCache(AcmeSettings(directory_url="", cache_root=tmp_path))
    assert production.dir.name == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    staging = CertificateCache(
        AcmeSettings("https://acme-staging-v02.api.letsencrypt.org/directory", cache_root=tmp_path)
    )
    assert staging.dir.name == "67f2750652314251daad76f012141d33c9f7290f4f8ebb0a006a7f02d394a904"


def test_cache_round_trips_and_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    cache = CertificateCache(AcmeSettings(directory_url="", cache_root=tmp_path))
    cert = trustme.CA().issue_cert("app.test")
    chain_pem = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    key_pem = cert.private_key_pem.bytes()

    assert cache.load("app.test") is None
    cache.store("app.test", chain_pem, key_pem)
    assert cache.load("app.test") == (chain_pem, key_pem)
    assert mode(cache.dir) == 0o700 and mode(cache.dir / "app.test") == 0o600

    other_key = trustme.CA().issue_cert("app.test").private_key_pem.bytes()
    cache.store("mismatched.test", chain_pem, other_key)
    assert cache.load("mismatched.test") is None
    (cache.dir / "garbage.test").write_bytes(b"not a certificate")
    assert cache.load("garbage.test") is None
    for bad in ("../escape", "", ".hidden", "a/b", "acme_account+key"):
        with pytest.raises(ValueError):
            cache.load(bad)


def test_certificate_helpers() -> None:
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ninety_days = ca.issue_cert("app.test", not_before=now - 10 * day, not_after=now + 80 * day)
    chain_pem = ninety_days.cert_chain_pems[0].bytes()

    assert abs(expires_at(chain_pem) - (now + 80 * day)) < datetime.timedelta(seconds=1)
    ca_name = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    assert issuer_name(chain_pem) == ca_name.rfc4514_string()  # trustme's CA has no common name
    assert not needs_renewal(chain_pem, now)
    assert not needs_renewal(chain_pem, now + 49 * day)
    assert needs_renewal(chain_pem, now + 51 * day)

    six_days = ca.issue_cert("app.test", not_before=now - 3 * day, not_after=now + 3 * day).cert_chain_pems[0]
    assert not needs_renewal(six_days.bytes(), now)
    assert needs_renewal(six_days.bytes(), now + 1.5 * day)
