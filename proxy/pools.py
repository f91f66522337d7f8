"""The per-process side of the routing table: connection pools and round-robin turns, bound at install.

The routing table is a value (it pickles; a control process can send it to workers). What only exists in
one process is kept here, keyed by values the table names: one `UpstreamPool` per (service, deploy, target
address), a deploy being its balancer's `generation`, and the turn of each round-robin. `PoolRegistry.bind`
ties a table's services to them once per table swap, so a request reaches its pool through attribute
reads, never a dict lookup.

A pool is keyed by its service as well as its address: pausing or redeploying one service drains, and at
the drain timeout cuts, only that service's requests, even when another service sends to the same server.
And by its deploy: a redeploy to the same address still drains what ran before it (and the old keep-alive
connections go, should the name now point at a new container), and a drain never cuts what a `remove`
left running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from proxy.balancer import LoadBalancer
from proxy.http.upstream import UpstreamPool
from proxy.routing import RoutingTable
from proxy.service import Service
from proxy.target import Target

PoolKey = tuple[str, int, str]  # (service name, balancer generation, target address)
ErrorSink = Callable[[str, BaseException], None]


class Endpoint:
    """One target as this process's requests reach it: its pool and the header naming it."""

    __slots__ = ("header_line", "pool")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.header_line = b"X-Kamal-Target: %s\r\n" % pool.address_bytes  # sent with every request


class RoundRobin:
    """Turns over one balancer's healthy writers, and its healthy read-only targets (spec 7.1, 7.3).

    Built for each table installed: the picks are on the hot path and only index a tuple."""

    __slots__ = ("_next", "_next_reader", "has_readers", "healthy", "healthy_readers")

    def __init__(
        self, healthy: tuple[Endpoint, ...], healthy_readers: tuple[Endpoint, ...], has_readers: bool
    ) -> None:
        self.healthy = healthy
        self.healthy_readers = healthy_readers
        self.has_readers = has_readers  # read-only targets are configured (healthy or not)
        self._next = 0
        self._next_reader = 0

    def continue_from(self, earlier: RoundRobin) -> None:
        """Go on where `earlier` (the same balancer in the table before) was, so that a swap for a
        health change or another service does not send the next request to the same target again."""
        self._next, self._next_reader = earlier._next, earlier._next_reader

    def pick(self) -> Endpoint | None:
        """A healthy writer."""
        healthy = self.healthy
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        self._next = (self._next + 1) % len(healthy)
        return healthy[self._next]

    def pick_reader(self) -> Endpoint | None:
        """A healthy read-only target, else a writer (no reader up must not mean no service)."""
        readers = self.healthy_readers
        if not readers:
            return self.pick()
        self._next_reader = (self._next_reader + 1) % len(readers)
        return readers[self._next_reader]


class BoundService:
    """A service of the installed table with this process's round-robins over its targets' endpoints.

    The routes of `ServiceDispatcher.routes` are these; `service` is the table's value."""

    __slots__ = ("balancer", "hosts", "name", "path_prefixes", "rollout", "service", "strip_prefix")

    def __init__(
        self,
        service: Service,
        balancer: RoundRobin,
        rollout: RoundRobin | None,
    ) -> None:
        self.service = service
        self.balancer = balancer
        self.rollout = rollout
        # What the routing table reads of a route.
        self.name = service.name
        self.hosts = service.hosts
        self.path_prefixes = service.path_prefixes
        self.strip_prefix = service.strip_prefix


class PoolRegistry:
    """This process's pools, by (service, deploy, address). A pool whose target leaves the table stops pooling
    (its requests run on) and is kept as retired until a drain waits for it or nothing runs on it."""

    def __init__(self) -> None:
        self.on_error: ErrorSink = _ignore_error
        self._live: dict[PoolKey, Endpoint] = {}
        self._retired: dict[PoolKey, list[Endpoint]] = {}
        self._turns: dict[tuple[str, int], RoundRobin] = {}  # by (service, generation)

    def bind(self, table: RoutingTable) -> RoutingTable:
        """`table` with each service bound to this process's endpoints; opens pools for new targets and
        retires those of targets gone."""
        previous, live = self._live, {}
        previous_turns, turns = self._turns, {}

        def endpoint(name: str, generation: int, target: Target) -> Endpoint:
            key = (name, generation, target.address)
            found = live.get(key) or previous.pop(key, None)
            if found is None:
                pool = UpstreamPool(target.host, target.port)
                pool.on_error = self.on_error
                found = Endpoint(pool)
            live[key] = found
            return found

        def round_robin(name: str, balancer: LoadBalancer) -> RoundRobin:
            generation = balancer.generation
            for target in balancer.targets:  # unhealthy ones too: their pools stay open
                endpoint(name, generation, target)
            turn = RoundRobin(
                tuple(endpoint(name, generation, t) for t in balancer.healthy),
                tuple(endpoint(name, generation, t) for t in balancer.healthy_readers),
                bool(balancer.readers),
            )
            earlier = previous_turns.get((name, generation))
            if earlier is not None:  # the same deploy (a health change, another service's swap)
                turn.continue_from(earlier)
            turns[(name, generation)] = turn
            return turn

        def bind_service(service: Service) -> BoundService:
            name = service.name
            rollout = service.rollout
            return BoundService(
                service,
                round_robin(name, service.balancer),
                round_robin(name, rollout) if rollout is not None else None,
            )

        bound = table.map(bind_service)
        for key, gone in previous.items():
            gone.pool.close()
            self._retired.setdefault(key, []).append(gone)
        self._live, self._turns = live, turns
        self._forget_finished()
        return bound

    def endpoint(self, key: PoolKey) -> Endpoint | None:
        """The endpoint the installed table sends `key`'s requests to."""
        return self._live.get(key)

    def in_flight(self, keys: Iterable[PoolKey]) -> int:
        """Requests running on these targets, retired or not."""
        return sum(endpoint.pool.in_flight for key in keys for endpoint in self._endpoints(key))

    async def drain(self, keys: Iterable[PoolKey], timeout: float) -> int:
        """Wait for the requests on these targets, cutting what still runs at `timeout`; how many were
        cut. Retired pools are then forgotten; a target still in the table keeps pooling (a pause)."""
        waits = []
        for key in set(keys):
            for endpoint in self._retired.pop(key, ()):
                waits.append(endpoint.pool.drain(timeout))
            live = self._live.get(key)
            if live is not None:
                waits.append(live.pool.drain(timeout, keep_pooling=True))
        return sum(await asyncio.gather(*waits))

    def _endpoints(self, key: PoolKey) -> list[Endpoint]:
        live = self._live.get(key)
        return [*self._retired.get(key, ()), *((live,) if live is not None else ())]

    def _forget_finished(self) -> None:
        """Retired pools nothing runs on any more (not even a WebSocket) have nothing left to drain."""
        for key, endpoints in list(self._retired.items()):
            running = [e for e in endpoints if e.pool.busy or e.pool.tunnels]
            if running:
                self._retired[key] = running
            else:
                del self._retired[key]


def _ignore_error(address: str, exc: BaseException) -> None:
    """Default for `PoolRegistry.on_error` until the owner installs a logger."""
