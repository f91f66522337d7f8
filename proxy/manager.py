"""Deploy, remove and restore services: the control plane's one writer of routing state.

A deploy health-checks the new targets, switches traffic in one reference
swap, then drains the targets it replaced, and only then reports done: when
`deploy` returns, nothing proxied is still running on the old targets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.acme import expires_at, issuer_name
from proxy.autocert import AutoCertificates
from proxy.balancer import LoadBalancer
from proxy.dispatcher import ServiceDispatcher
from proxy.flags import format_duration
from proxy.health import HealthChecker
from proxy.log import JsonLog
from proxy.ondemand import OnDemandCertificates
from proxy.routing import RoutingTable
from proxy.service import Service, ServiceOptions
from proxy.state import StateStore
from proxy.target import Target, TargetState
from proxy.tls import CertificateMap, TlsTerminator, load_certificate

Progress = Callable[..., None]


def _no_progress(event: str, **details: Any) -> None:
    """Progress sink for changes nobody is watching (restore at start)."""


class DeployError(Exception):
    """A deploy that could not go ahead; the service keeps its previous targets."""


class ServiceNotFound(KeyError):
    def __str__(self) -> str:
        return f"service not found: {self.args[0]}"


@dataclass(frozen=True)
class DeployRequest:
    service: str
    targets: tuple[str, ...]
    options: ServiceOptions
    deploy_timeout: float = 30.0
    drain_timeout: float = 30.0
    force: bool = False


class ServiceManager:
    def __init__(
        self,
        dispatcher: ServiceDispatcher,
        tls: TlsTerminator,
        auto: AutoCertificates,
        store: StateStore,
        log: JsonLog,
    ) -> None:
        self.dispatcher = dispatcher
        self.tls = tls
        self.auto = auto
        auto.on_change = self._publish_certificates
        self.store = store
        self.log = log
        self.services: dict[str, Service] = {}
        self._checkers: dict[LoadBalancer, list[HealthChecker]] = {}
        self._healthy_events: dict[LoadBalancer, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self.on_demand = OnDemandCertificates(auto, lambda: self.session, log)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        await self.auto.close()
        for balancer in list(self._checkers):
            self._stop_checks(balancer)
        if self._session is not None:
            await self._session.close()

    # -- deploy -------------------------------------------------------------------

    async def deploy(self, request: DeployRequest, progress: Progress) -> None:
        """Run one deploy to the end; raises DeployError (old targets untouched) on failure."""
        lock = self._locks.setdefault(request.service, asyncio.Lock())
        async with lock:
            await self._deploy(request, progress)

    async def _deploy(self, request: DeployRequest, progress: Progress) -> None:
        name, options = request.service, request.options
        self._check_conflicts(name, options)
        certificate = _load_certificate(options)
        balancer = LoadBalancer(self._new_target(a) for a in request.targets)
        self._start_checks(balancer, options)
        if not request.force:
            progress(
                "waiting",
                targets=[t.address for t in balancer.targets],
                timeout=format_duration(request.deploy_timeout),
            )
            try:
                await asyncio.wait_for(self._healthy_events[balancer].wait(), request.deploy_timeout)
            except TimeoutError:
                self._discard(balancer)
                raise DeployError(self._unhealthy_message(balancer, request.deploy_timeout)) from None
            progress("healthy")
        try:
            self._check_conflicts(name, options)
        except DeployError:
            self._discard(balancer)
            raise
        old = self.services.get(name)
        self.services[name] = Service(name, options, balancer, certificate)
        self._publish()
        self.log.info(
            "Deployed",
            service=name,
            targets=[t.address for t in balancer.targets],
            hosts=[h for h in options.hosts if h],
            paths=list(options.path_prefixes),
        )
        progress("switched")
        self._request_certificates(self.services[name], progress)
        await self._persist()
        if old is not None:
            await self._drain(old.balancer, request.drain_timeout, progress)
        progress("done")

    def _new_target(self, address: str) -> Target:
        target = Target(address)
        target.pool.on_error = self._upstream_error
        return target

    def _upstream_error(self, address: str, exc: BaseException) -> None:
        self.log.error("Error while proxying", target=address, error=str(exc) or exc.__class__.__name__)

    def _check_conflicts(self, name: str, options: ServiceOptions) -> None:
        message = self.dispatcher.table.conflicts(name, options.hosts, options.path_prefixes)
        if message:
            raise DeployError(message)

    def _unhealthy_message(self, balancer: LoadBalancer, timeout: float) -> str:
        failing = [
            f"{t.address}: {t.last_error or 'no health check completed yet'}"
            for t in balancer.targets
            if not t.healthy
        ]
        return (
            f"target failed to become healthy within configured timeout ({format_duration(timeout)}); "
            f"last health check: {'; '.join(failing)}"
        )

    async def _drain(self, balancer: LoadBalancer, timeout: float, progress: Progress) -> None:
        self._stop_checks(balancer)
        progress("draining", requests=balancer.in_flight, timeout=format_duration(timeout))
        cut = await asyncio.gather(*(t.pool.drain(timeout) for t in balancer.targets))
        if sum(cut):
            self.log.warn(
                "Requests cut by drain timeout",
                targets=[t.address for t in balancer.targets],
                requests=sum(cut),
            )
        progress("drained", cut=sum(cut))

    # -- remove, list, restore ----------------------------------------------------

    async def remove(self, name: str) -> None:
        """Stop routing to `name` at once; requests in flight finish on their own."""
        service = self.services.pop(name, None)
        if service is None:
            raise ServiceNotFound(name)
        self._publish()
        self._discard(service.balancer)
        wanted = {h for s in self.services.values() if s.acme for h in s.hosts}
        for host in service.hosts:
            if host not in wanted:
                self.auto.forget(host)
        self.log.info("Removed", service=name)
        await self._persist()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "service": s.name,
                "hosts": [h for h in s.options.hosts if h],
                "paths": list(s.options.path_prefixes),
                "tls": s.tls_enabled,
                "certificates": self._certificate_details(s),
                "targets": [{"address": t.address, "state": t.state.value} for t in s.balancer.targets],
            }
            for s in sorted(self.services.values(), key=lambda s: s.name)
        ]

    def _certificate_details(self, service: Service) -> list[dict[str, str]]:
        """Issuer and expiry of what each TLS host is served with, for `pyproxy list`."""
        details = []
        hosts = service.hosts if service.tls_enabled else ()
        if service.options.tls.on_demand_url:
            hosts = sorted(self.on_demand.hosts)
        for host in hosts:
            chain = self.auto.chains.get(host)
            if service.certificate is not None:
                try:
                    with open(service.options.tls.certificate_path, "rb") as pem:
                        chain = pem.read()
                except OSError as exc:
                    details.append({"host": host, "issuer": f"(unreadable: {exc.strerror})", "expires": "-"})
                    continue
            if chain is None:
                details.append({"host": host, "issuer": "(not issued yet)", "expires": "-"})
            else:
                expires = expires_at(chain).strftime("%Y-%m-%d %H:%M UTC")
                details.append({"host": host, "issuer": issuer_name(chain), "expires": expires})
        return details

    def restore(self, entries: list[dict[str, Any]]) -> None:
        """Reinstall saved services; their targets are trusted healthy at once, as before the restart."""
        for entry in entries:
            name = entry.get("name", "?")
            try:
                options = ServiceOptions.from_json(entry)
                self._check_conflicts(name, options)
                certificate = _load_certificate(options)
                balancer = LoadBalancer(self._new_target(a) for a in entry.get("active_targets") or [])
            except (ValueError, TypeError, DeployError) as exc:
                self.log.error("Skipping saved service", service=name, error=str(exc))
                continue
            for target in balancer.targets:
                balancer.set_state(target, TargetState.HEALTHY)
            self.services[name] = Service(name, options, balancer, certificate)
            self._publish()
            self._request_certificates(self.services[name], _no_progress)
            if len(balancer.targets) > 1:
                self._start_checks(balancer, options)
            self.log.info("Restored", service=name, targets=[t.address for t in balancer.targets])

    # -- internals ------------------------------------------------------------------

    def _publish(self) -> None:
        self._inherit_tls()
        self.dispatcher.table = RoutingTable.build(self.services.values())
        self._publish_certificates()

    def _inherit_tls(self) -> None:
        """Give each sub-path service the TLS settings of the root service of its first host (spec 4.5)."""
        roots = RoutingTable.build(s for s in self.services.values() if "/" in s.path_prefixes)
        for name, service in list(self.services.items()):
            if "/" in service.path_prefixes:
                continue
            match = roots.lookup(service.hosts[0], "/")
            root = match.service if match is not None else None
            inherited = (root.tls_enabled, root.tls_redirect) if root is not None else (False, True)
            if inherited != (service.tls_enabled, service.tls_redirect):
                self.services[name] = dataclasses.replace(service, inherited_tls=inherited)

    def _publish_certificates(self) -> None:
        if any(s.options.tls.on_demand_url for s in self.services.values()):
            self.tls.on_demand = self._prepare_on_demand
        elif self.tls.on_demand is not None:
            self.tls.on_demand = None
            self.on_demand.forget_all()
        self.tls.certificates = CertificateMap.build(self._certificates(), self._on_demand_certificates())

    def _certificates(self) -> Iterator[tuple[str, ssl.SSLContext]]:
        for service in self.services.values():
            if not service.tls_enabled:
                continue
            for host in service.hosts:
                context = service.certificate or self.auto.contexts.get(host)
                if context is not None:
                    yield host, context

    def _on_demand_certificates(self) -> Iterator[tuple[str, ssl.SSLContext]]:
        for host in self.on_demand.hosts:
            context = self.auto.contexts.get(host)
            if context is not None:
                yield host, context

    def _prepare_on_demand(self, server_name: str) -> Awaitable[None] | None:
        """A handshake for a name without a certificate: order one if an on-demand service serves it."""
        match = self.dispatcher.table.lookup(server_name, "/")
        service = match.service if match is not None else None
        if service is None or not service.options.tls.on_demand_url:
            return None
        return self.on_demand.prepare(server_name, service)

    def _request_certificates(self, service: Service, progress: Progress) -> None:
        if service.acme:
            for host in filter(None, service.hosts):  # on-demand services list none: see ondemand.py
                progress("certificate", host=host, state=self.auto.ensure(host, service.options.tls))

    async def _persist(self) -> None:
        """Save the services; a failure is logged, not raised: the change it records already happened."""
        try:
            await self.store.save(lambda: [s.to_json() for s in self.services.values()])
        except OSError as exc:
            self.log.error("Could not save state", path=str(self.store.path), error=str(exc))

    def _start_checks(self, balancer: LoadBalancer, options: ServiceOptions) -> None:
        self._healthy_events[balancer] = asyncio.Event()
        checkers = [
            HealthChecker(
                self.session,
                target,
                options.health_check,
                lambda t, error, b=balancer: self._report(b, t, error),
            )
            for target in balancer.targets
        ]
        self._checkers[balancer] = checkers
        for checker in checkers:
            checker.start()

    def _report(self, balancer: LoadBalancer, target: Target, error: str | None) -> bool:
        """Apply one health-check result; False stops probing that target."""
        if error is None:
            self.log.debug("Healthcheck succeeded", target=target.address)
            if balancer.set_state(target, TargetState.HEALTHY):
                self.log.info("Target health updated", target=target.address, state="healthy")
            if balancer.all_healthy:
                self._healthy_events[balancer].set()
            # A single target is never taken out of rotation, so probing it further helps nothing.
            return len(balancer.targets) > 1
        target.last_error = error
        self.log.info("Healthcheck failed", target=target.address, error=error)
        if target.healthy and balancer.set_state(target, TargetState.UNHEALTHY):
            self.log.info("Target health updated", target=target.address, state="unhealthy")
        return True

    def _stop_checks(self, balancer: LoadBalancer) -> None:
        for checker in self._checkers.pop(balancer, ()):
            checker.stop()
        self._healthy_events.pop(balancer, None)

    def _discard(self, balancer: LoadBalancer) -> None:
        self._stop_checks(balancer)
        for target in balancer.targets:
            target.pool.close()


def _load_certificate(options: ServiceOptions) -> ssl.SSLContext | None:
    """The operator's certificate for a TLS service, checked now so a bad pair fails the deploy."""
    tls = options.tls
    if not tls.enabled or not tls.custom:
        return None
    try:
        return load_certificate(tls.certificate_path, tls.private_key_path)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
