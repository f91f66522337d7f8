"""Deploy, remove and restore services: the control plane's one writer of routing state.

A deploy health-checks the new targets, switches traffic in one reference
swap, then drains the targets it replaced, and only then reports done: when
`deploy` returns, nothing proxied is still running on the old targets.

Everything it publishes is a value: the routing table (services, targets and
their health) goes to the data plane whole through `DataPlane.publish`, and a
health change publishes a new one; so do the certificates served. What runs on
the targets is only asked of the data plane (`in_flight`, `drain`), by (service,
deploy, address): the data plane may be this process or N workers (proxy/dataplane.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.acme import expires_at, issuer_name
from proxy.autocert import AutoCertificates
from proxy.balancer import LoadBalancer
from proxy.dataplane import DataPlane, Drained
from proxy.errorpages import ErrorPages, load_error_pages
from proxy.flags import format_duration
from proxy.health import HealthWatch
from proxy.log import JsonLog
from proxy.ondemand import OnDemandCertificates
from proxy.pause import PAUSED, RUNNING, STOPPED, PauseState
from proxy.pools import PoolKey
from proxy.rollout import RolloutSplit
from proxy.routing import RoutingTable
from proxy.service import Service, ServiceOptions
from proxy.state import StateStore
from proxy.target import Target, TargetState
from proxy.tls import CertificateFiles, ServedCertificates, load_certificate

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
        data_plane: DataPlane,
        auto: AutoCertificates,
        store: StateStore,
        log: JsonLog,
    ) -> None:
        self.data_plane = data_plane
        data_plane.ask_certificate = self._prepare_on_demand
        self.auto = auto
        auto.on_change = self._publish_certificates
        self.store = store
        self.log = log
        self.services: dict[str, Service] = {}
        self.table = RoutingTable.build(())  # the last one published
        self._operator_certificates: dict[str, CertificateFiles] = {}  # by service: the operator's files
        # Saved services that could not be restored (a certificate gone...): kept in the state file as
        # they were, so fixing the cause and restarting brings them back, until one of that name is deployed.
        self.unrestored: dict[str, dict[str, Any]] = {}
        self._watches: list[HealthWatch] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self.on_demand = OnDemandCertificates(auto, lambda: self.session, log)
        self._served = ServedCertificates()  # the certificates last published

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        await self.auto.close()
        for watch in list(self._watches):
            self._stop_watch(watch)
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
        watch = self._start_watch(LoadBalancer.of(request.targets, request.read_targets), options)
        if not request.force:
            await self._wait_healthy(watch, request.deploy_timeout, progress)
        try:
            self._check_conflicts(name, options)
        except DeployError:
            self._stop_watch(watch)
            raise
        balancer = watch.balancer  # with the health found so far
        old = self.services.get(name)
        if old is None:
            service = Service(name, options, balancer, error_pages=error_pages)
        else:  # a deploy keeps the service's pause state and rollout (spec 6.1)
            service = dataclasses.replace(
                old,
                options=options,
                balancer=balancer,
                error_pages=error_pages,
                inherited_tls=None,  # worked out again for the new options by _publish
            )
            self._stop_checks(old.balancer)
        self.services[name] = service
        self._set_certificate(name, certificate)
        self._publish()
        await self.data_plane.applied()
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
            await self._drain(_retired(name, old.balancer, service), request.drain_timeout, progress)
        progress("done")

    async def _wait_healthy(self, watch: HealthWatch, timeout: float, progress: Progress) -> None:
        targets = [t.address for t in watch.balancer.targets]
        progress("waiting", targets=targets, timeout=format_duration(timeout))
        try:
            await asyncio.wait_for(watch.all_healthy.wait(), timeout)
        except TimeoutError:
            self._stop_watch(watch)
            raise DeployError(_unhealthy_message(watch, timeout)) from None
        progress("healthy")

    def _check_conflicts(self, name: str, options: ServiceOptions) -> None:
        message = self.table.conflicts(name, options.hosts, options.path_prefixes)
        if message:
            raise DeployError(message)

    async def _drain(self, keys: set[PoolKey], timeout: float, progress: Progress) -> None:
        """Wait for the requests in flight on these targets, cutting them at `timeout`. Targets no longer
        published stop pooling; those still published (a paused service's) keep pooling."""
        requests = await self.data_plane.in_flight(keys)
        progress("draining", requests=requests, timeout=format_duration(timeout))
        drained: Drained = await self.data_plane.drain(keys, timeout)
        if drained.cut:
            self.log.warn(
                "Requests cut by drain timeout",
                targets=sorted({address for _, _, address in keys}),
                requests=drained.cut,
            )
        if drained.unconfirmed:
            progress("drained", cut=drained.cut, unconfirmed=list(drained.unconfirmed))
        else:
            progress("drained", cut=drained.cut)

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
        await self.data_plane.applied()
        message = {"message": state.stop_message} if state.stop_message else {}
        self.log.info(_PAUSE_EVENTS[state.state], service=name, **message)
        await self.persist()
        if drain_timeout is not None:
            await self._drain(_keys(name, service.balancer, service.rollout), drain_timeout, _no_progress)
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
            watch = self._start_watch(LoadBalancer.of(targets, read_targets), options)
            await self._wait_healthy(watch, deploy_timeout, progress)
            service = self._service(name)  # as it is now, after the wait
            old = service.rollout
            if old is not None:
                self._stop_checks(old)
            balancer = watch.balancer
            self.services[name] = dataclasses.replace(service, rollout=balancer)
            self._publish()
            await self.data_plane.applied()
            self.log.info("Rollout deployed", service=name, targets=[t.address for t in balancer.targets])
            progress("switched")
            await self.persist()
            if old is not None:
                await self._drain(_retired(name, old, self.services.get(name)), drain_timeout, progress)
            progress("done")

    async def rollout_set(self, name: str, percentage: int, allowlist: list[str]) -> None:
        service = self._service(name)
        if service.rollout is None:
            raise DeployError("rollout target not set")
        split = RolloutSplit(percentage, frozenset(value.encode() for value in allowlist))
        self.services[name] = dataclasses.replace(service, split=split)
        self._publish()
        await self.data_plane.applied()
        self.log.info("Rollout set", service=name, percentage=percentage, allowlist=allowlist)
        await self.persist()

    async def rollout_stop(self, name: str) -> None:
        """Send every request to the active targets again; the rollout targets stay, for a later `set`."""
        self.services[name] = dataclasses.replace(self._service(name), split=None)
        self._publish()
        await self.data_plane.applied()
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
        self._set_certificate(name, None)
        self._publish()
        await self.data_plane.applied()
        self._stop_checks(service.balancer)
        wanted = {h for s in self.services.values() if s.acme for h in s.hosts}
        for host in service.hosts:
            if host not in wanted:
                self.auto.forget(host)
        if service.rollout is not None:
            self._stop_checks(service.rollout)
        self.log.info("Removed", service=name)
        await self.persist()

    async def describe(self) -> list[dict[str, Any]]:
        services = sorted(self.services.values(), key=lambda s: s.name)
        held = [await self.data_plane.held(s.name) for s in services]
        return [
            {
                "service": s.name,
                "hosts": [h for h in s.options.hosts if h],
                "paths": list(s.options.path_prefixes),
                "tls": s.tls_enabled,
                "state": s.pause.state,
                "held": held_now,
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
            for s, held_now in zip(services, held, strict=True)
        ]

    def _certificate_details(self, service: Service) -> list[dict[str, str]]:
        """Issuer and expiry of what each TLS host is served with, for `pyproxy list`."""
        details = []
        hosts = service.hosts if service.tls_enabled else ()
        if service.options.tls.on_demand_url:
            hosts = sorted(self.on_demand.hosts)
        for host in hosts:
            chain = self.auto.chains.get(host)
            if service.name in self._operator_certificates:
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
                balancer = LoadBalancer.of(writers, entry.get("active_readers") or [], TargetState.HEALTHY)
                rollout_writers = entry.get("rollout_targets") or _legacy(entry, "rollout_target")
                rollout = (
                    LoadBalancer.of(rollout_writers, entry.get("rollout_readers") or [], TargetState.HEALTHY)
                    if rollout_writers
                    else None
                )
                split = entry.get("rollout_controller")
                service = Service(
                    name,
                    options,
                    balancer,
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
                if len(slot.targets) > 1:
                    self._start_watch(slot, options)
            self.services[name] = service
            self._set_certificate(name, certificate)
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
        self.table = RoutingTable.build(self.services.values())
        self.data_plane.publish(self.table)
        self._publish_certificates()

    def _set_certificate(self, name: str, certificate: CertificateFiles | None) -> None:
        if certificate is None:
            self._operator_certificates.pop(name, None)
        else:
            self._operator_certificates[name] = certificate

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
        on_demand = any(s.options.tls.on_demand_url for s in self.services.values())
        if not on_demand:
            self.on_demand.forget_all()
        served = ServedCertificates(
            tuple(self._certificates()), tuple(self._on_demand_certificates()), ask_unknown=on_demand
        )
        if served != self._served:  # a health change republishes the table, not the certificates
            self._served = served
            self.data_plane.publish_certificates(served)

    def _certificates(self) -> Iterator[tuple[str, CertificateFiles]]:
        for service in self.services.values():
            if not service.tls_enabled:
                continue
            for host in service.hosts:
                files = self._operator_certificates.get(service.name) or self.auto.files.get(host)
                if files is not None:
                    yield host, files

    def _on_demand_certificates(self) -> Iterator[tuple[str, CertificateFiles]]:
        for host in self.on_demand.hosts:
            files = self.auto.files.get(host)
            if files is not None:
                yield host, files

    def _prepare_on_demand(self, server_name: str) -> Awaitable[None] | None:
        """A handshake for a name without a certificate: order one if an on-demand service serves it."""
        match = self.table.lookup(server_name, "/")
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

    def _start_watch(self, balancer: LoadBalancer, options: ServiceOptions) -> HealthWatch:
        watch = HealthWatch(self.session, balancer, options.health_check, self._report)
        self._watches.append(watch)
        watch.start()
        return watch

    def _report(self, watch: HealthWatch, target: Target, error: str | None) -> bool:
        """Apply one health-check result; False stops probing that target."""
        address = target.address
        if error is None:
            self.log.debug("Healthcheck succeeded", target=address)
            if self._set_health(watch, address, TargetState.HEALTHY):
                self.log.info("Target health updated", target=address, state="healthy")
            if watch.balancer.all_healthy:
                watch.all_healthy.set()
            # A single target is never taken out of rotation, so probing it further helps nothing.
            return len(watch.balancer.targets) > 1
        watch.errors[address] = error
        self.log.info("Healthcheck failed", target=address, error=error)
        healthy = watch.balancer.state_of(address) is TargetState.HEALTHY
        if healthy and self._set_health(watch, address, TargetState.UNHEALTHY):
            self.log.info("Target health updated", target=address, state="unhealthy")
        return True

    def _set_health(self, watch: HealthWatch, address: str, state: TargetState) -> bool:
        """Record a health change; a balancer already published is replaced by a new table."""
        old = watch.set_state(address, state)
        if old is None:
            return False
        in_use = False
        for name, service in list(self.services.items()):
            slots = {}
            if service.balancer is old:
                slots["balancer"] = watch.balancer
            if service.rollout is old:
                slots["rollout"] = watch.balancer
            if slots:
                self.services[name] = dataclasses.replace(service, **slots)
                in_use = True
        if in_use:
            self._publish()
        return True

    def _stop_checks(self, balancer: LoadBalancer) -> None:
        """Stop the checks of a published balancer (the identical value: equal ones may be another's)."""
        for watch in self._watches:
            if watch.balancer is balancer:
                self._stop_watch(watch)
                return

    def _stop_watch(self, watch: HealthWatch) -> None:
        watch.stop()
        self._watches.remove(watch)


_PAUSE_EVENTS = {PAUSED: "Service paused", STOPPED: "Service stopped", RUNNING: "Service resumed"}


def _keys(name: str, *slots: LoadBalancer | None) -> set[PoolKey]:
    """The pools of a service's targets in these slots."""
    return {(name, slot.generation, t.address) for slot in slots if slot is not None for t in slot.targets}


def _retired(name: str, old: LoadBalancer, service: Service | None) -> set[PoolKey]:
    """The targets of `old` that `service` (as published now) no longer sends to."""
    if service is None:
        return _keys(name, old)
    return _keys(name, old) - _keys(name, service.balancer, service.rollout)


def _unhealthy_message(watch: HealthWatch, timeout: float) -> str:
    failing = [
        f"{t.address}: {watch.errors.get(t.address) or 'no health check completed yet'}"
        for t in watch.balancer.targets
        if not t.healthy
    ]
    return (
        f"target failed to become healthy within configured timeout ({format_duration(timeout)}); "
        f"last health check: {'; '.join(failing)}"
    )


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


def _load_certificate(options: ServiceOptions) -> CertificateFiles | None:
    """The operator's certificate for a TLS service, checked now so a bad pair fails the deploy."""
    tls = options.tls
    if not tls.enabled or not tls.custom:
        return None
    try:
        return load_certificate(tls.certificate_path, tls.private_key_path)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
