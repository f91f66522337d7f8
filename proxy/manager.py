"""Deploy, remove and restore services: the control plane's one writer of routing state.

A deploy health-checks the new targets, switches traffic in one reference
swap, then drains the targets it replaced, and only then reports done: when
`deploy` returns, nothing proxied is still running on the old targets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.acme import expires_at, issuer_name
from proxy.autocert import AutoCertificates
from proxy.balancer import LoadBalancer
from proxy.dispatcher import ServiceDispatcher
from proxy.errorpages import ErrorPages, load_error_pages
from proxy.flags import format_duration
from proxy.health import HealthChecker
from proxy.log import JsonLog
from proxy.ondemand import OnDemandCertificates
from proxy.pause import PAUSED, RUNNING, STOPPED, PauseState
from proxy.rollout import RolloutSplit
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
    read_targets: tuple[str, ...] = ()


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
        # Saved services that could not be restored (a certificate gone...): kept in the state file as
        # they were, so fixing the cause and restarting brings them back, until one of that name is deployed.
        self.unrestored: dict[str, dict[str, Any]] = {}
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
        error_pages = _load_error_pages(options)
        balancer = self._new_balancer(request.targets, request.read_targets)
        self._start_checks(balancer, options)
        if not request.force:
            await self._wait_healthy(balancer, request.deploy_timeout, progress)
        try:
            self._check_conflicts(name, options)
        except DeployError:
            self._discard(balancer)
            raise
        old = self.services.get(name)
        if old is None:
            service = Service(name, options, balancer, certificate, error_pages=error_pages)
        else:  # a deploy keeps the service's pause state and rollout (spec 6.1)
            service = dataclasses.replace(
                old,
                options=options,
                balancer=balancer,
                certificate=certificate,
                error_pages=error_pages,
                inherited_tls=None,  # worked out again for the new options by _publish
            )
        self.services[name] = service
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
        await self.persist()
        if old is not None:
            await self._drain(old.balancer, request.drain_timeout, progress)
        progress("done")

    async def _wait_healthy(self, balancer: LoadBalancer, timeout: float, progress: Progress) -> None:
        progress("waiting", targets=[t.address for t in balancer.targets], timeout=format_duration(timeout))
        try:
            await asyncio.wait_for(self._healthy_events[balancer].wait(), timeout)
        except TimeoutError:
            self._discard(balancer)
            raise DeployError(self._unhealthy_message(balancer, timeout)) from None
        progress("healthy")

    def _new_balancer(self, writers: Iterable[str], readers: Iterable[str] = ()) -> LoadBalancer:
        return LoadBalancer(map(self._new_target, writers), map(self._new_target, readers))

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

    async def _drain(
        self, balancer: LoadBalancer, timeout: float, progress: Progress, replaced: bool = True
    ) -> None:
        """Wait for the requests in flight on `balancer`'s targets, cutting them at `timeout`. A balancer
        being `replaced` stops its health checks and pooling; one being paused keeps both."""
        if replaced:
            self._stop_checks(balancer)
        progress("draining", requests=balancer.in_flight, timeout=format_duration(timeout))
        cut = await asyncio.gather(
            *(t.pool.drain(timeout, keep_pooling=not replaced) for t in balancer.targets)
        )
        if sum(cut):
            self.log.warn(
                "Requests cut by drain timeout",
                targets=[t.address for t in balancer.targets],
                requests=sum(cut),
            )
        progress("drained", cut=sum(cut))

    # -- maintenance (spec 8) ------------------------------------------------------

    async def pause(self, name: str, drain_timeout: float, max_pause: float) -> None:
        """Hold new requests (504 after `max_pause`); return once those in flight are done."""
        await self._set_pause(name, PauseState(PAUSED, fail_after=max_pause), drain_timeout)

    async def stop(self, name: str, drain_timeout: float, message: str) -> None:
        """Answer new requests 503 (the error page shows `message`); return once those in flight are done."""
        await self._set_pause(name, PauseState(STOPPED, stop_message=message), drain_timeout)

    async def resume(self, name: str) -> None:
        await self._set_pause(name, PauseState(RUNNING), None)

    async def _set_pause(self, name: str, state: PauseState, drain_timeout: float | None) -> None:
        """Applied at once, without the service's lock: a `resume` must not wait behind a deploy's health
        checks or another pause's drain (a deploy swapping in later keeps the state it finds then)."""
        service = self._service(name)
        self.services[name] = dataclasses.replace(service, pause=state)
        self._publish()
        message = {"message": state.stop_message} if state.stop_message else {}
        self.log.info(_PAUSE_EVENTS[state.state], service=name, **message)
        await self.persist()
        if drain_timeout is not None:
            slots = [slot for slot in (service.balancer, service.rollout) if slot is not None]
            await asyncio.gather(
                *(self._drain(slot, drain_timeout, _no_progress, replaced=False) for slot in slots)
            )
            self.log.info("Service drained", service=name)

    # -- rollout (spec 7.4) ----------------------------------------------------------

    async def rollout_deploy(
        self,
        name: str,
        targets: tuple[str, ...],
        read_targets: tuple[str, ...],
        deploy_timeout: float,
        drain_timeout: float,
        progress: Progress,
    ) -> None:
        """Install targets in the service's rollout slot, health-checked like a deploy, with its options."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            options = self._service(name).options
            balancer = self._new_balancer(targets, read_targets)
            self._start_checks(balancer, options)
            await self._wait_healthy(balancer, deploy_timeout, progress)
            service = self._service(name)  # as it is now, after the wait
            old = service.rollout
            self.services[name] = dataclasses.replace(service, rollout=balancer)
            self._publish()
            self.log.info("Rollout deployed", service=name, targets=[t.address for t in balancer.targets])
            progress("switched")
            await self.persist()
            if old is not None:
                await self._drain(old, drain_timeout, progress)
            progress("done")

    async def rollout_set(self, name: str, percentage: int, allowlist: list[str]) -> None:
        service = self._service(name)
        if service.rollout is None:
            raise DeployError("rollout target not set")
        split = RolloutSplit(percentage, frozenset(value.encode() for value in allowlist))
        self.services[name] = dataclasses.replace(service, split=split)
        self._publish()
        self.log.info("Rollout set", service=name, percentage=percentage, allowlist=allowlist)
        await self.persist()

    async def rollout_stop(self, name: str) -> None:
        """Send every request to the active targets again; the rollout targets stay, for a later `set`."""
        self.services[name] = dataclasses.replace(self._service(name), split=None)
        self._publish()
        self.log.info("Rollout stopped", service=name)
        await self.persist()

    def _service(self, name: str) -> Service:
        service = self.services.get(name)
        if service is None:
            raise ServiceNotFound(name)
        return service

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
        if service.rollout is not None:
            self._discard(service.rollout)
        self.log.info("Removed", service=name)
        await self.persist()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "service": s.name,
                "hosts": [h for h in s.options.hosts if h],
                "paths": list(s.options.path_prefixes),
                "tls": s.tls_enabled,
                "state": s.pause.state,
                "held": self.dispatcher.held(s.name),
                "certificates": self._certificate_details(s),
                "targets": [{"address": t.address, "state": t.state.value} for t in s.balancer.targets],
                "rollout": {
                    "targets": [t.address for t in s.rollout.targets],
                    "percentage": s.split.percentage if s.split else None,
                    "allowlist": sorted(v.decode() for v in s.split.allowlist) if s.split else [],
                }
                if s.rollout is not None
                else None,
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
                error_pages = self._restore_error_pages(name, options)
                writers = entry.get("active_targets") or _legacy(entry, "active_target")
                balancer = self._new_balancer(writers, entry.get("active_readers") or [])
                rollout_writers = entry.get("rollout_targets") or _legacy(entry, "rollout_target")
                rollout = (
                    self._new_balancer(rollout_writers, entry.get("rollout_readers") or [])
                    if rollout_writers
                    else None
                )
                split = entry.get("rollout_controller")
                service = Service(
                    name,
                    options,
                    balancer,
                    certificate,
                    error_pages=error_pages,
                    pause=PauseState.from_json(entry.get("pause_controller") or {}),
                    rollout=rollout,
                    split=RolloutSplit.from_json(split) if split and rollout else None,
                )
            except (ValueError, TypeError, AttributeError, DeployError) as exc:
                self.log.error(
                    "Skipping saved service (kept in the state file)", service=name, error=str(exc)
                )
                self.unrestored[name] = entry
                continue
            for slot in filter(None, (balancer, rollout)):
                for target in slot.targets:
                    slot.set_state(target, TargetState.HEALTHY)
                if len(slot.targets) > 1:
                    self._start_checks(slot, options)
            self.services[name] = service
            self._publish()
            self._request_certificates(service, _no_progress)
            self.log.info(
                "Restored",
                service=name,
                targets=[t.address for t in balancer.targets],
                state=service.pause.state,
            )

    def _restore_error_pages(self, name: str, options: ServiceOptions) -> ErrorPages | None:
        """A saved service whose pages no longer load keeps its routes, with the built-in pages."""
        try:
            return _load_error_pages(options)
        except DeployError as exc:
            self.log.error("Error pages not restored; using the built-in ones", service=name, error=str(exc))
            return None

    # -- internals ------------------------------------------------------------------

    def _publish(self) -> None:
        self._inherit_tls()
        self.dispatcher.publish(RoutingTable.build(self.services.values()))
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

    def _snapshot(self) -> list[dict[str, Any]]:
        kept = [entry for name, entry in self.unrestored.items() if name not in self.services]
        return [s.to_json() for s in self.services.values()] + kept

    async def persist(self) -> None:
        """Save the services; a failure is logged, not raised: the change it records already happened."""
        try:
            await self.store.save(self._snapshot)
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


_PAUSE_EVENTS = {PAUSED: "Service paused", STOPPED: "Service stopped", RUNNING: "Service resumed"}


def _legacy(entry: dict[str, Any], key: str) -> list[str]:
    """Older kamal-proxy state files name one target per slot (spec 3)."""
    value = entry.get(key)
    return [value] if isinstance(value, str) and value else []


def _load_error_pages(options: ServiceOptions) -> ErrorPages | None:
    """The service's error pages, checked now so a directory that does not load fails the deploy."""
    if not options.error_pages_path:
        return None
    try:
        return load_error_pages(options.error_pages_path)
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def _load_certificate(options: ServiceOptions) -> ssl.SSLContext | None:
    """The operator's certificate for a TLS service, checked now so a bad pair fails the deploy."""
    tls = options.tls
    if not tls.enabled or not tls.custom:
        return None
    try:
        return load_certificate(tls.certificate_path, tls.private_key_path)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
