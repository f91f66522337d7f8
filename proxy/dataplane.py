"""The data plane as the control plane drives it: one process's dispatcher and TLS terminator.

`ServiceManager` publishes values to a `DataPlane` and asks it about requests; it does not know
whether the data plane is in its own process (`LocalDataPlane`, `--workers 1`) or in N worker
processes (proxy/fleet.py's `WorkerFleet`, each of which runs a `LocalDataPlane` of its own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from proxy.challenges import Http01Tokens, TlsAlpnChallenges
from proxy.dispatcher import ServiceDispatcher
from proxy.log import JsonLog
from proxy.pools import PoolKey
from proxy.routing import RoutingTable
from proxy.tls import ServedCertificates, TlsTerminator

CertificateRequest = Callable[[str], Awaitable[None] | None]


@dataclass(frozen=True)
class Drained:
    """How a drain ended: requests cut at its timeout, and the workers that never said (named for the
    operator, "worker 2 (pid 4711)"); the deploy returns all the same."""

    cut: int
    unconfirmed: tuple[str, ...] = ()


class DataPlane(Protocol):
    """What the control plane publishes to the data plane, and asks of it."""

    # Set by the control plane: readies a certificate for a server name no certificate covers (on-demand
    # TLS); what it returns is what the handshake waits for.
    ask_certificate: CertificateRequest

    def publish(self, table: RoutingTable) -> None: ...

    def publish_certificates(self, served: ServedCertificates) -> None: ...

    async def applied(self) -> None:
        """Returns once everything published so far is what the data plane serves (before a command
        that changed it returns to the operator)."""

    async def in_flight(self, keys: Iterable[PoolKey]) -> int: ...

    async def drain(self, keys: Iterable[PoolKey], timeout: float) -> Drained: ...

    async def held(self, name: str) -> int: ...


class LocalDataPlane:
    """The data plane of this process, serving what it is published."""

    def __init__(self, tokens: Http01Tokens, alpn_challenges: TlsAlpnChallenges, log: JsonLog) -> None:
        self.log = log
        self.dispatcher = ServiceDispatcher(tokens)
        self.dispatcher.pools.on_error = self._upstream_error
        self.tls = TlsTerminator(alpn_challenges, self._ask_certificate)
        self.ask_certificate: CertificateRequest = no_certificate

    def publish(self, table: RoutingTable) -> None:
        self.dispatcher.publish(table)

    def publish_certificates(self, served: ServedCertificates) -> None:
        for host in self.tls.install(served):
            self.log.error("Certificate could not be loaded; its host fails TLS handshakes", host=host)

    async def applied(self) -> None:
        """Published is served, in this process."""

    async def in_flight(self, keys: Iterable[PoolKey]) -> int:
        return self.dispatcher.in_flight(keys)

    async def drain(self, keys: Iterable[PoolKey], timeout: float) -> Drained:
        return Drained(await self.dispatcher.drain(keys, timeout))

    async def held(self, name: str) -> int:
        return self.dispatcher.held(name)

    def _ask_certificate(self, server_name: str) -> Awaitable[None] | None:
        return self.ask_certificate(server_name)

    def _upstream_error(self, address: str, exc: BaseException) -> None:
        self.log.error("Error while proxying", target=address, error=str(exc) or exc.__class__.__name__)


def no_certificate(server_name: str) -> None:
    """`ask_certificate` until the control plane sets it: nothing to wait for."""
