"""Per-request routing: Host and path to a service, service to a target.

The control plane publishes a new immutable RoutingTable on every change; the data plane binds it to this
process's pools once (`routes`, proxy/pools.py) and reads that once per request without a lock. A
service with nothing beyond pick-and-proxy (the default options) takes the short path in `route`; the
rest (maintenance, rollouts, read targets, error pages, buffering, logged headers...) is
`_route_extended`, so those features cost nothing to the services that do not use them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from proxy.challenges import Http01Tokens
from proxy.http.request import Request
from proxy.http.responses import redirect_response, text_response
from proxy.pause import PAUSED, RUNNING, STOPPED, WaitingRoom
from proxy.pools import BoundService, Endpoint, PoolKey, PoolRegistry
from proxy.responsehead import WRITER_COOKIE, HeadRewrite
from proxy.rollout import COOKIE as ROLLOUT_COOKIE
from proxy.routing import RoutingTable, strip_port
from proxy.service import Service

if TYPE_CHECKING:
    from proxy.metrics import Metrics

_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
# What a paused or stopped service answers to its own health-check path, so load balancers keep the host.
_HEALTHY_WHILE_PAUSED = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_READS = (b"GET", b"HEAD")
_COOKIE_VALUE_BYTES = bytes(sorted(set(range(0x20, 0x7F)) - {ord('"'), ord(";"), ord("\\")}))


class ServiceDispatcher:
    """The data plane of one process: what the control plane publishes to it and asks of it is the table
    (`publish`), and the requests on targets (`in_flight`, `drain`) and held by services (`held`)."""

    def __init__(self, tokens: Http01Tokens) -> None:
        self.table = RoutingTable.build(())  # as published: a value
        self.pools = PoolRegistry()
        self.routes = self.pools.bind(self.table)  # the same, bound to this process's pools
        self.tokens = tokens
        self.metrics: Metrics | None = None
        self._rooms: dict[str, WaitingRoom] = {}  # requests held by paused services

    def publish(self, table: RoutingTable) -> None:
        """Swap in a new table; requests held for a service no longer paused go on, to its new state."""
        self.routes = self.pools.bind(table)
        self.table = table
        services = {service.name: service for service in table.routes()}
        for name, room in list(self._rooms.items()):
            service = services.get(name)
            if service is not None and service.pause.state == PAUSED:
                room.timeout = service.pause.fail_after
            elif service is None:  # removed while paused: nothing else may take what it held
                del self._rooms[name]
                room.fail_all(503)
            else:
                del self._rooms[name]
                room.release_all()

    def in_flight(self, keys: Iterable[PoolKey]) -> int:
        """Requests running on these (service, address) targets."""
        return self.pools.in_flight(keys)

    async def drain(self, keys: Iterable[PoolKey], timeout: float) -> int:
        """Wait for the requests on these targets, cut what runs at `timeout`; how many were cut."""
        return await self.pools.drain(keys, timeout)

    def held(self, name: str) -> int:
        """How many requests the service `name` holds (for `list` and the in-flight gauge)."""
        room = self._rooms.get(name)
        return len(room) if room is not None else 0

    def route(self, request: Request) -> int | bytes:
        url = request.url
        match = self.routes.lookup(request.host.decode("latin-1"), url.decode("latin-1"))
        if match is None:
            return 404
        bound = match.service
        service = bound.service
        routed_before = request.service  # a held request, let go: routed again, counted once
        request.service = service.name_bytes
        if match.prefix == "/" or not service.strip_prefix:
            request.path = url
        else:
            request.path = match.upstream_path.encode("latin-1")
        if self.metrics is not None and not routed_before:
            self.metrics.started(request, service)
        if service.checks_first or request.scheme == b"https":
            answer = self._answer_first(request, service)
            if answer:
                return answer
        if service.extended:
            target = self._route_extended(request, bound, match.prefix)
            if target.__class__ is not Endpoint:
                return target  # answered, or held
        else:
            target = bound.balancer.pick()
            if target is None:
                return 503
        options = service.options
        request.pool = target.pool
        request.forward_headers = options.forward_headers
        request.target_timeout = options.target_timeout
        if request.kamal_target is None:
            request.headers.append(target.header_line)
        else:
            _chain_kamal_target(request, options.forward_headers, target)
        return 0

    def _answer_first(self, request: Request, service: Service) -> int | bytes:
        """What the proxy answers itself before proxying (spec 5, 11.4): TLS mismatch (503), ACME
        HTTP-01 challenges (before any redirect, so they work over plain HTTP), then redirects."""
        secure = request.scheme == b"https"
        if secure and not service.tls_enabled:
            request.pages = service.pages
            return 503
        if service.acme and not secure and request.url.startswith(_CHALLENGE_PREFIX):
            key_authorization = self.tokens.get(request.url[len(_CHALLENGE_PREFIX) :].decode("latin-1"))
            return 404 if key_authorization is None else text_response(key_authorization)
        return _redirect(request, service, secure)

    def _route_extended(self, request: Request, bound: BoundService, prefix: str) -> Endpoint | int | bytes:
        """Everything after the redirects for a service that uses more than the defaults (spec 5, 10c-d):
        the target to send the request to, or what `route` returns instead."""
        service = bound.service
        request.pages = service.pages
        if service.log_headers is not None:
            request.extra_log = service.log_headers.request_fields(request)
        if service.client_ip_header:
            client_ip = _header(request, service.client_ip_header)
            if client_ip:  # an empty one says nothing (kamal-proxy ignores it too)
                request.xff = client_ip
        state = service.pause.state
        if state != RUNNING:
            if request.method in _READS and request.path.partition(b"?")[0] == service.health_path:
                return _HEALTHY_WHILE_PAUSED
            if state == STOPPED:
                request.pages = service.stopped_pages
                return 503
            room = self._rooms.get(service.name)
            if room is None:
                room = self._rooms[service.name] = WaitingRoom(self._release, service.pause.fail_after)
            request.pool = room
            request.target_timeout = service.options.target_timeout
            return 0
        balancer = bound.balancer
        cookies = _cookies(request) if service.split is not None or balancer.has_readers else {}
        if service.split is not None and bound.rollout is not None:
            chosen = cookies.get(ROLLOUT_COOKIE)
            if chosen is not None and service.split.chooses(chosen):
                balancer = bound.rollout
        options = service.options
        write = True
        if balancer.has_readers:
            # The kamal-writer cookie sends a read to the writers, but it is still a read: it does not
            # renew the cookie (kamal-proxy), so affinity ends when the client stops writing.
            write = not _is_read(request, options.read_targets_accept_websockets)
            target = balancer.pick() if write or _wrote_recently(cookies) else balancer.pick_reader()
        else:
            target = balancer.pick()
        if target is None:
            return 503
        scoped = options.scope_cookie_paths and prefix != "/" and options.strip_prefix
        if not (balancer.has_readers or scoped):
            request.head_filter = service.log_rewrite  # the same for every request (Kamal's default)
        else:
            affinity = write and options.writer_affinity_timeout > 0
            request.head_filter = HeadRewrite(
                log_headers=service.log_headers,
                strip_affinity=balancer.has_readers,
                affinity_ms=round(options.writer_affinity_timeout * 1000) if affinity else 0,
                prefix=prefix.encode("latin-1") if scoped else b"",
            )
        request.buffering = service.buffering
        return target

    def _release(self, request: Request, client: Any) -> None:
        """A held request goes on: the client routes it again, to the service as it is now."""
        client.start_again(request)


def _chain_kamal_target(request: Request, forward_headers: bool, target: Endpoint) -> None:
    """The client sent X-Kamal-Target: kept in front of ours behind a trusted proxy, else replaced."""
    if forward_headers:
        chain = (request.kamal_target, target.pool.address_bytes)
        request.headers.append(b"X-Kamal-Target: %s, %s\r\n" % chain)
    else:
        request.headers.append(target.header_line)


def _is_read(request: Request, websockets: bool) -> bool:
    """A request read-only targets may answer (spec 7.3): GET or HEAD, not a WebSocket (unless allowed)."""
    if request.method not in _READS:
        return False
    return request.upgrade is None or websockets or request.upgrade.lower() != b"websocket"


def _wrote_recently(cookies: dict[bytes, bytes]) -> bool:
    """Whether the client's `kamal-writer` cookie (unix ms) is still in the future; garbage is not."""
    until = cookies.get(WRITER_COOKIE)
    # 19 digits hold any time in unix ms; more would only make int() slow (or refuse, past 4300 digits).
    return until is not None and until.isdigit() and len(until) < 20 and int(until) > time.time() * 1000


def _cookies(request: Request) -> dict[bytes, bytes]:
    """The request's cookies by name (the first of each name), from its Cookie header lines. As Go's
    net/http reads them: a value in double quotes loses them, and one with bytes a cookie value cannot
    hold (controls, non-ASCII, a quote or backslash inside) is dropped, as is an empty one."""
    found: dict[bytes, bytes] = {}
    for line in request.headers:
        if line[:7].lower() == b"cookie:":
            for pair in line[7:].split(b";"):
                name, _, value = pair.partition(b"=")
                value = value.strip()
                if value[:1] == b'"' and value[-1:] == b'"' and len(value) > 1:
                    value = value[1:-1]
                if value and not value.translate(None, _COOKIE_VALUE_BYTES):
                    found.setdefault(name.strip(), value)
    return found


def _header(request: Request, name: bytes) -> bytes | None:
    """The first value of a request header (`name` lower-cased), or None."""
    size = len(name)
    for line in request.headers:
        if line[size : size + 1] == b":" and line[:size].lower() == name:
            return line[size + 1 :].strip()
    return None


def _redirect(request: Request, service: Service, secure: bool) -> int | bytes:
    """A 301 when the request should use HTTPS or the canonical host; else 0 (proxy it)."""
    options = service.options
    scheme = b"https" if service.tls_enabled and service.tls_redirect and not secure else request.scheme
    host = strip_port(request.host.decode("latin-1")).encode("latin-1")
    canonical = options.canonical_host.encode()
    if canonical and host.lower() != canonical:
        host = canonical
    elif scheme == request.scheme:
        return 0
    # The port is always dropped, as kamal-proxy does: scheme and host are fixed in one hop.
    return redirect_response(b"%s://%s%s" % (scheme, host, request.url))
