"""Immutable routing table: (Host, request-target) -> service binding (spec §4.1-4.6).

The control plane builds a new RoutingTable on every change and swaps one reference; the data plane calls
lookup() once per request without locks. All sorting and normalisation therefore happens in build(), and
lookup() is a few dict gets plus, for non-root prefixes, a startswith per binding.

A table of values is a value: it compares equal by its routes and pickles as them (rebuilt on loading),
so it can be sent to another process. map() gives the same bindings over other routes: how a process
ties the table's services to what lives only there (proxy/pools.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote_from_bytes, unquote_to_bytes

CONFLICT_ERROR = "host settings conflict with another service"
DEFAULT_HOST_LABEL = "(default host)"

# "/" plus RFC 3986 sub-delims, ":" and "@": what may stay literal in a re-encoded path segment.
_PATH_SAFE = "/!$&'()*+,;=:@"


def normalize_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """Canonical host list: config and requests are both lower-cased so lookups are plain dict gets.

    An empty list means the default binding "" (spec §4.1).
    """
    return tuple(dict.fromkeys(host.strip().lower() for host in hosts)) or ("",)


def normalize_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """Canonical prefixes ("api/" -> "/api"), so equal prefixes compare equal; empty list means "/"."""
    return tuple(dict.fromkeys("/" + prefix.strip("/") for prefix in prefixes)) or ("/",)


def validate_host(host: str) -> None:
    """Reject host patterns that could never match a request Host, instead of silently never routing.

    "" (the default binding), names, "*.name" (one-label wildcard) and bracketed IPv6 literals are valid.
    """
    if host == "":
        return
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f'invalid host "{host}": not a valid IPv6 literal') from None
        return
    if any(char.isspace() for char in host):
        raise ValueError(f'invalid host "{host}": must not contain spaces')
    if ":" in host:
        raise ValueError(f'invalid host "{host}": must not contain a port')
    if "/" in host or "\\" in host:
        raise ValueError(f'invalid host "{host}": must not contain slashes')
    if "*" in host.removeprefix("*."):
        raise ValueError(
            f'invalid host "{host}": "*" is only allowed as a whole first label ("*.example.com")'
        )
    if "" in host.split("."):
        raise ValueError(f'invalid host "{host}": empty label')


class Route(Protocol):
    """What the table needs from a service; hosts and prefixes must already be normalised."""

    name: str
    hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...]
    strip_prefix: bool


class Match(NamedTuple):
    """Result of a lookup: the service, the prefix that selected it and the path to send upstream.

    A NamedTuple because it is built on every request: tuple construction is the cheapest immutable value.
    """

    service: Any
    prefix: str
    upstream_path: str


_Bindings = tuple[tuple[str, Route], ...]  # (prefix, route) for one host, longest prefix first


class RoutingTable:
    """Host -> prefix bindings, built once and only read afterwards."""

    __slots__ = ("_default", "_hosts", "_owners", "_routes", "_wildcards")

    def __init__(self, routes: tuple[Route, ...], owners: dict[tuple[str, str], Route]) -> None:
        """Use build(); this only stores already validated data."""
        by_host: dict[str, list[tuple[str, Route]]] = {}
        for (host, prefix), route in owners.items():
            by_host.setdefault(host, []).append((prefix, route))
        self._hosts: dict[str, _Bindings] = {
            host: tuple(sorted(bindings, key=lambda binding: len(binding[0]), reverse=True))
            for host, bindings in by_host.items()
        }
        # The default binding is kept apart so a table without named hosts skips host matching entirely.
        self._default = self._hosts.pop("", None)
        self._wildcards = any(host.startswith("*.") for host in self._hosts)
        self._owners = owners
        self._routes = routes

    @classmethod
    def build(cls, routes: Iterable[Route]) -> RoutingTable:
        """Index routes by (host, prefix); raises ValueError if two routes claim the same binding."""
        routes = tuple(routes)
        owners: dict[tuple[str, str], Route] = {}
        for route in routes:
            for host in route.hosts:
                for prefix in route.path_prefixes:
                    owner = owners.setdefault((host, prefix), route)
                    if owner is not route:
                        raise ValueError(_conflict_message(host, prefix, owner.name))
        return cls(routes, owners)

    def map(self, bind: Callable[[Any], Route]) -> RoutingTable:
        """The same bindings with each route replaced by `bind(route)`, called once per route."""
        bound = {id(route): bind(route) for route in self._routes}
        owners = {binding: bound[id(route)] for binding, route in self._owners.items()}
        return RoutingTable(tuple(bound.values()), owners)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingTable) and self._routes == other._routes

    def __reduce__(self) -> tuple[Any, ...]:
        return (RoutingTable.build, (self._routes,))

    def routes(self) -> tuple[Route, ...]:
        """Every route in the table, in build order (for state saving and listing)."""
        return self._routes

    def conflicts(self, name: str, hosts: tuple[str, ...], prefixes: tuple[str, ...]) -> str | None:
        """Error message if another service owns one of hosts x prefixes, else None (spec §4.4).

        Bindings owned by `name` itself do not conflict: a redeploy replaces them.
        """
        for host in hosts:
            for prefix in prefixes:
                owner = self._owners.get((host, prefix))
                if owner is not None and owner.name != name:
                    return _conflict_message(host, prefix, owner.name)
        return None

    def lookup(self, host: str, target: str) -> Match | None:
        """Route one request: `host` is the Host header as received, `target` the raw request-target.

        Returns None when nothing matches (the caller answers 404) or the target form is unsupported.
        """
        if target[:1] != "/":
            return self._lookup_other_form(host, target)
        bindings = self._bindings_for(host) if self._hosts else self._default
        if bindings is None:
            return None
        prefix, route = bindings[0]
        if prefix == "/":  # "/" is the shortest prefix, so it is this host's only binding: the common case
            return Match(route, "/", target)
        return _match_path(bindings, target)

    def _bindings_for(self, host: str) -> _Bindings | None:
        """Host-level selection (spec §4.2): exact, then one-label wildcard, then default; no fallthrough."""
        if ":" in host:
            host = strip_port(host)
        hosts = self._hosts
        bindings = hosts.get(host)  # keys are lower case, so a hit here needs no lower()
        if bindings is not None:
            return bindings
        host = host.lower()
        bindings = hosts.get(host)
        if bindings is not None:
            return bindings
        dot = host.find(".")
        if dot > 0 and self._wildcards:
            bindings = hosts.get("*" + host[dot:])
            if bindings is not None:
                return bindings
        return self._default

    def _lookup_other_form(self, host: str, target: str) -> Match | None:
        """Asterisk-form ("OPTIONS *") and absolute-form targets; anything else matches nothing."""
        if target == "*":
            bindings = self._bindings_for(host)
            if bindings is not None and bindings[-1][0] == "/":
                return Match(bindings[-1][1], "/", "*")
            return None
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return None
        # Like Go's net/http, the authority of an absolute-form target replaces the Host header.
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut].rpartition("@")[2], rest[cut:]
        return self.lookup(authority or host, path if path[:1] == "/" else "/" + path)


def strip_port(host: str) -> str:
    """Drop a ":port" suffix, keeping IPv6 literals intact: "[::1]:8080" -> "[::1]", "a.com:80" -> "a.com"."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.find(":")
    return host[:colon] if colon > 0 else host


def _match_path(bindings: _Bindings, target: str) -> Match | None:
    """Longest whole-segment prefix match on the (percent-decoded) path of an origin-form target."""
    # Common case: match on the raw target, where "?" also ends the last segment and the query just follows.
    path, boundaries, query, decoded = target, "/?", "", False
    if "%" in target:
        raw_path, mark, raw_query = target.partition("?")
        if "%" in raw_path:  # decode only when needed; a decoded "?" (%3F) is part of the path
            path = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
            boundaries, query, decoded = "/", mark + raw_query, True
    for prefix, route in bindings:
        if prefix == "/":  # sorted last; matches everything and never strips
            return Match(route, "/", target)
        size = len(prefix)
        if not path.startswith(prefix) or (len(path) > size and path[size] not in boundaries):
            continue
        if not route.strip_prefix:
            return Match(route, prefix, target)
        rest = path[size:]
        if decoded:
            rest = quote_from_bytes((rest or "/").encode("utf-8", "surrogateescape"), _PATH_SAFE) + query
        elif rest[:1] != "/":  # "" or "?query"
            rest = "/" + rest
        return Match(route, prefix, rest)
    return None


def _conflict_message(host: str, prefix: str, owner: str) -> str:
    """kamal-proxy's conflict text plus which binding clashes and who owns it."""
    return f'{CONFLICT_ERROR}: "{host or DEFAULT_HOST_LABEL}{prefix}" is served by "{owner}"'
