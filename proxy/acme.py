"""Automatic certificates from an ACME CA (Let's Encrypt or any directory URL), and their on-disk cache.

The `acme` library is synchronous, so every network exchange runs in a worker thread. One order runs at a
time per issuer (the library's nonce pool and HTTP session are not meant to be shared between threads),
and concurrent requests for the same host share one order. The cache layout is autocert's `DirCache`
(see the spec, §11.2), so a cache written by kamal-proxy can be read here and the other way round.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.challenges import Http01Tokens, TlsAlpnChallenges
from proxy.letsencrypt import LETS_ENCRYPT

ACCOUNT_KEY_FILE = "acme_account+key"
HTTP_01 = "http-01"
TLS_ALPN_01 = "tls-alpn-01"
# RFC 8555 7.5.1: a client tells the CA to validate by posting an empty JSON object, whatever the
# challenge type; the acme library's HTTP-01 response serializes to exactly that.
_READY = challenges.HTTP01Response()
ORDER_TIMEOUT = 90.0  # seconds for the CA to validate and issue, as the acme library's default
NETWORK_TIMEOUT = 30  # seconds per request to the CA
RENEW_BEFORE = datetime.timedelta(days=30)

_HOST = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class AcmeError(Exception):
    """An issuance failed; the message is one line an operator can act on."""


@dataclass(frozen=True)
class AcmeSettings:
    """Where to get certificates and where to keep them."""

    directory_url: str  # "" means Let's Encrypt production (kamal-proxy's convention, which keys the cache)
    cache_root: Path  # the cache lives in cache_root / sha256(directory_url)
    eab_kid: str = ""  # External Account Binding, for CAs such as ZeroSSL
    eab_hmac_key: str = ""  # base64url, as CAs hand it out
    ca_bundle: str | None = None  # CA file verifying the directory's HTTPS instead of requests' default

    @property
    def directory(self) -> str:
        return self.directory_url or LETS_ENCRYPT


class CertificateCache:
    """The on-disk layout: dir 0700; files 0600; `acme_account+key` (account key PEM) and one file per
    host named <host> holding the private key PEM followed by the certificate chain PEM (as autocert's
    DirCache does)."""

    def __init__(self, settings: AcmeSettings) -> None:
        digest = hashlib.sha256(settings.directory_url.encode()).hexdigest()
        self._dir = settings.cache_root / digest

    @property
    def dir(self) -> Path:
        """Scoped by directory URL, so switching staging and production never reuses the wrong certs."""
        return self._dir

    def load(self, host: str) -> tuple[bytes, bytes] | None:
        """(chain_pem, key_pem) for a host, or None if absent or unparsable (then it is simply reissued)."""
        data = self._read(_checked_host(host))
        if data is None:
            return None
        try:
            return _split_key_and_chain(data)
        except (ValueError, TypeError):  # TypeError: an encrypted or unsupported key
            return None

    def store(self, host: str, chain_pem: bytes, key_pem: bytes) -> None:
        self._write(_checked_host(host), key_pem + chain_pem)

    def load_account_key(self) -> ec.EllipticCurvePrivateKey | None:
        data = self._read(ACCOUNT_KEY_FILE)
        if data is None:
            return None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AcmeError(f"{self._dir / ACCOUNT_KEY_FILE} is not an ECDSA key")
        return key

    def store_account_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._write(ACCOUNT_KEY_FILE, _key_pem(key))

    def _read(self, name: str) -> bytes | None:
        try:
            return (self._dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        """Atomic: a reader sees the old file or the new one, never half of one."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self._dir, prefix=f".{name}.")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self._dir / name)
        except BaseException:
            os.unlink(temp)
            raise


class AcmeIssuer:
    """Orders certificates with one account per cache directory.

    HTTP-01 is tried first (port 80, as kamal-proxy's users expect it); when the CA cannot validate it
    (port 80 closed or elsewhere), a second order is validated with TLS-ALPN-01 on the HTTPS port, if the
    proxy answers those (`alpn_challenges`).
    """

    def __init__(
        self,
        settings: AcmeSettings,
        tokens: Http01Tokens,
        log: Callable[..., None] | None = None,
        alpn_challenges: TlsAlpnChallenges | None = None,
    ) -> None:
        self.settings = settings
        self.cache = CertificateCache(settings)
        self._tokens = tokens
        self._alpn_challenges = alpn_challenges
        self._log = log or (lambda msg, **attrs: None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: client.ClientV2 | None = None
        self._one_order_at_a_time = threading.Lock()
        self._pending: dict[str, asyncio.Future[tuple[bytes, bytes]]] = {}

    async def issue(self, host: str) -> tuple[bytes, bytes]:
        """Order a certificate for one host (HTTP-01, else TLS-ALPN-01); return (chain_pem, key_pem) and
        store it in the cache. Reuses the cached account key (creating and registering one on first use,
        terms accepted, no e-mail; with EAB when configured). ECDSA P-256 certificate key.
        Raises AcmeError with a one-line, operator-readable reason (CA refused, challenge failed with the
        CA's detail, timeout...)."""
        _checked_host(host)
        self._loop = asyncio.get_running_loop()
        pending = self._pending.get(host)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._issue, host))
            self._pending[host] = pending
            pending.add_done_callback(lambda _: self._pending.pop(host, None))
        return await asyncio.shield(pending)  # a cancelled caller must not cancel the others' order

    def _issue(self, host: str) -> tuple[bytes, bytes]:
        with self._one_order_at_a_time:
            try:
                try:
                    chain_pem, key_pem = self._order(host, HTTP_01)
                except errors.ValidationError as exc:
                    if self._alpn_challenges is None:
                        raise
                    self._note("HTTP-01 failed, trying TLS-ALPN-01", host=host, error=self._reason(exc))
                    chain_pem, key_pem = self._order(host, TLS_ALPN_01)
                self.cache.store(host, chain_pem, key_pem)
            except Exception as exc:
                raise AcmeError(f"certificate for {host}: {self._reason(exc)}") from exc
        self._note("Certificate issued", host=host, expires=expires_at(chain_pem).isoformat())
        return chain_pem, key_pem

    def _note(self, msg: str, **attrs: Any) -> None:
        """Log from the worker thread through the event loop: the proxy's log is not thread-safe."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(functools.partial(self._log, msg, **attrs))

    def _order(self, host: str, kind: str) -> tuple[bytes, bytes]:
        acme = self._account()
        key_pem = _key_pem(ec.generate_private_key(ec.SECP256R1()))
        self._note("Ordering certificate", host=host, directory=self.settings.directory, challenge=kind)
        order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
        withdraw = [self._answer(acme, authorization, kind) for authorization in order.authorizations]
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        try:
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for undo in withdraw:
                undo()
        return order.fullchain_pem.encode(), key_pem

    def _answer(
        self, acme: client.ClientV2, authorization: messages.AuthorizationResource, kind: str
    ) -> Callable[[], None]:
        """Publish the answer to the `kind` challenge, tell the CA to check it; returns how to withdraw it."""
        for challenge in authorization.body.challenges:
            chall = challenge.chall
            # acme 5 no longer models tls-alpn-01: the CA's challenge arrives as an UnrecognizedChallenge.
            unmodelled = isinstance(chall, challenges.UnrecognizedChallenge)
            if (chall.jobj.get("type") if unmodelled else chall.typ) != kind:
                continue
            token = chall.jobj["token"] if unmodelled else chall.encode("token")
            key_authorization = _key_authorization(token, acme.net.key)
            if kind == HTTP_01:
                self._tokens.put(token, key_authorization)
                undo = functools.partial(self._tokens.remove, token)
            else:
                host = authorization.body.identifier.value
                self._alpn_challenges.put(host, key_authorization)
                undo = functools.partial(self._alpn_challenges.remove, host)
            acme.answer_challenge(challenge, _READY)
            return undo
        raise AcmeError(f"the CA offered no {kind} challenge")

    def _account(self) -> client.ClientV2:
        """The client bound to our account: the cached key, registered (or found again) on first use."""
        if self._client is not None:
            return self._client
        key = self.cache.load_account_key()
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            self.cache.store_account_key(key)
        jwk = jose.JWKEC(key=key)
        verify: bool | str = self.settings.ca_bundle or True
        net = client.ClientNetwork(
            jwk, alg=jose.ES256, verify_ssl=verify, user_agent="pyproxy", timeout=NETWORK_TIMEOUT
        )
        acme = client.ClientV2(client.ClientV2.get_directory(self.settings.directory, net), net)
        registration = messages.NewRegistration.from_data(
            terms_of_service_agreed=True, external_account_binding=self._eab(jwk, acme.directory)
        )
        try:
            account = acme.new_account(registration)
            self._note("ACME account registered", account=account.uri, directory=self.settings.directory)
        except messages.Error as refused:
            raise AcmeError(f"the CA refused the ACME account: {_problem(refused)}") from refused
        except errors.ConflictError as existing:  # the CA already knows this key
            net.account = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
            self._note("ACME account reused", account=existing.location, directory=self.settings.directory)
        self._client = acme
        return acme

    def _eab(self, jwk: jose.JWKEC, directory: messages.Directory) -> dict[str, Any] | None:
        if not self.settings.eab_kid:
            return None
        try:
            return messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(),
                kid=self.settings.eab_kid,
                hmac_key=self.settings.eab_hmac_key,
                directory=directory,
            )
        except ValueError as exc:
            raise AcmeError(f"the EAB HMAC key is not base64url: {exc}") from exc

    def _reason(self, exc: Exception) -> str:
        """One line saying what went wrong, with the CA's own words when it gave some."""
        if isinstance(exc, AcmeError):
            return str(exc)
        if isinstance(exc, errors.ValidationError):
            problems = [c.error for a in exc.failed_authzrs for c in a.body.challenges if c.error]
            return "challenge failed: " + (
                "; ".join(_problem(p) for p in problems) or "no detail from the CA"
            )
        if isinstance(exc, errors.TimeoutError):
            return f"the CA did not validate and issue within {ORDER_TIMEOUT:.0f}s"
        if isinstance(exc, errors.IssuanceError):
            return f"the CA refused to issue: {_problem(exc.error)}"
        if isinstance(exc, messages.Error):
            return f"the CA refused: {_problem(exc)}"
        if isinstance(exc, requests.RequestException):
            return f"cannot reach the ACME CA at {self.settings.directory}: {_one_line(str(_innermost(exc)))}"
        return _one_line(f"{type(exc).__name__}: {exc}")


def expires_at(chain_pem: bytes) -> datetime.datetime:
    """When the leaf certificate expires (UTC)."""
    return x509.load_pem_x509_certificate(chain_pem).not_valid_after_utc


def issuer_name(chain_pem: bytes) -> str:
    """Who issued the leaf (its common name, else the whole name), for `pyproxy list`."""
    issuer = x509.load_pem_x509_certificate(chain_pem).issuer
    common_names = issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else issuer.rfc4514_string()


def needs_renewal(chain_pem: bytes, now: datetime.datetime | None = None) -> bool:
    """True when less than 30 days are left, or less than a third of the lifetime for short-lived certs.
    `now` is an aware datetime (default: the current time)."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    now = now or datetime.datetime.now(datetime.UTC)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return leaf.not_valid_after_utc - now < min(RENEW_BEFORE, lifetime / 3)


def _checked_host(host: str) -> str:
    """Host names become file names: refuse anything that could leave the cache directory."""
    if not _HOST.fullmatch(host):
        raise ValueError(f"not a host name: {host!r}")
    return host


def _key_authorization(token: str, account_key: jose.JWK) -> bytes:
    """RFC 8555 8.1: the token, a dot, and the base64url SHA-256 thumbprint of the account key."""
    return f"{token}.{jose.b64encode(account_key.thumbprint()).decode()}".encode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """SEC1 "EC PRIVATE KEY" PEM, the form autocert writes."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _split_key_and_chain(data: bytes) -> tuple[bytes, bytes]:
    """(chain_pem, key_pem) from a cache file; ValueError unless the key matches the leaf."""
    start = data.find(b"-----BEGIN CERTIFICATE-----")
    if start <= 0:
        raise ValueError("no key before the certificates")
    key_pem, chain_pem = data[:start], data[start:]
    key = serialization.load_pem_private_key(key_pem, password=None)
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    if leaf.public_key() != key.public_key():
        raise ValueError("the key does not match the certificate")
    return chain_pem, key_pem


def _innermost(exc: BaseException) -> BaseException:
    """The root cause (e.g. "Connection refused") under requests' and urllib3's wrappers."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def _problem(error: messages.Error) -> str:
    return _one_line(error.detail or error.description or error.typ)


def _one_line(text: str) -> str:
    return " ".join(text.split())
