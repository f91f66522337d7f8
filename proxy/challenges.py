"""The ACME challenges the proxy answers while an order is being validated: HTTP-01 tokens on the HTTP
port, TLS-ALPN-01 certificates on the HTTPS port (proxy/tlsalpn.py makes those).

Light to import: a worker process starts without the ACME client or cryptography, and loads the latter
only when a TLS-ALPN-01 challenge first arrives. `on_change` tells the worker processes (proxy/fleet.py,
thruster/workers.py) of every change, before the CA is told to validate, so whichever worker the CA
reaches answers; `MirroredChallenges` keeps the current ones for the workers that start later.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
CHALLENGE_TIMEOUT = 5.0  # for every worker to take an ACME challenge


class Http01Tokens:
    """HTTP-01 key authorizations the proxy serves at /.well-known/acme-challenge/<token> while an order
    is pending. The issuer's worker thread writes them; single dict operations are atomic, so no lock."""

    def __init__(self) -> None:
        self._authorizations: dict[str, bytes] = {}
        # Told of every change before the CA is (workers answer too: proxy/fleet.py), in the writer's thread.
        self.on_change: Callable[[str, bytes | None], None] = unmirrored

    def get(self, token: str) -> bytes | None:
        """The key authorization for a token, or None (answer 404): a dict lookup, cheap on the hot path."""
        return self._authorizations.get(token)

    def put(self, token: str, key_authorization: bytes) -> None:
        self._authorizations[token] = key_authorization
        self.on_change(token, key_authorization)

    def remove(self, token: str) -> None:
        self._authorizations.pop(token, None)
        self.on_change(token, None)


class TlsAlpnChallenges:
    """The challenge contexts of orders in progress, by host. The issuer's worker thread writes them;
    single dict operations are atomic, so no lock."""

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}
        # Told of every change before the CA is (workers answer too: proxy/fleet.py), in the writer's thread.
        self.on_change: Callable[[str, bytes | None], None] = unmirrored

    def get(self, host: str) -> ssl.SSLContext | None:
        return self._contexts.get(host)

    def put(self, host: str, key_authorization: bytes) -> None:
        from proxy.tlsalpn import challenge_context  # cryptography: loaded when a CA first calls

        self._contexts[host] = challenge_context(host, key_authorization)
        self.on_change(host, key_authorization)

    def remove(self, host: str) -> None:
        self._contexts.pop(host, None)
        self.on_change(host, None)


def unmirrored(key: str, value: bytes | None) -> None:
    """`on_change` of challenges only this process answers."""


def apply_challenge(
    tokens: Http01Tokens, alpn: TlsAlpnChallenges, kind: str, key: str, value: bytes | None
) -> None:
    """A worker takes one mirrored change: `kind` HTTP01 or TLS_ALPN01, `value` None to remove."""
    challenges = alpn if kind == TLS_ALPN01 else tokens
    if value is None:
        challenges.remove(key)
    else:
        challenges.put(key, value)


def mirrored(
    kind: str,
    everywhere: Callable[[str, str, bytes | None], Awaitable[None]],
    loop: asyncio.AbstractEventLoop,
    warn: Callable[..., None],
) -> Callable[[str, bytes | None], None]:
    """An `on_change` for the ACME issuer's thread that returns once `everywhere(kind, key, value)`, run
    on `loop`, has given the change to every worker (it waits at most CHALLENGE_TIMEOUT for them; past
    that, plus a second, `warn` is called on `loop`, where the log is written): the CA, told next, finds
    it on whichever worker it reaches."""

    def changed(key: str, value: bytes | None) -> None:
        done = asyncio.run_coroutine_threadsafe(everywhere(kind, key, value), loop)
        try:
            done.result(CHALLENGE_TIMEOUT + 1.0)
        except TimeoutError:
            loop.call_soon_threadsafe(
                functools.partial(warn, "A worker did not take an ACME challenge in time", challenge=kind)
            )

    return changed


class MirroredChallenges:
    """The challenges every worker must answer now, kept by the process that supervises them: a worker
    started while an order is pending (a replacement) is sent them in its start message, as it missed
    the changes. Changed on the supervisor's loop only (in the `everywhere` it gives `mirrored`)."""

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], bytes] = {}

    def set(self, kind: str, key: str, value: bytes | None) -> None:
        """Note a change (`value` None to remove) before it is sent to the live workers."""
        if value is None:
            self._current.pop((kind, key), None)
        else:
            self._current[(kind, key)] = value

    def snapshot(self) -> list[tuple[str, str, bytes]]:
        """The current challenges as `apply_challenge` arguments (kind, key, value), in the order added."""
        return [(kind, key, value) for (kind, key), value in self._current.items()]
