"""Per-request routing: Host and path to a service, service to a target.

The control plane swaps `table` for a new immutable RoutingTable on every
change; the data plane reads it once per request without a lock.
"""

from __future__ import annotations

from proxy.acme import Http01Tokens
from proxy.http.request import Request
from proxy.http.responses import redirect_response, text_response
from proxy.routing import RoutingTable, strip_port
from proxy.service import Service

_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


class ServiceDispatcher:
    def __init__(self, tokens: Http01Tokens) -> None:
        self.table = RoutingTable.build(())
        self.tokens = tokens

    def route(self, request: Request) -> int | bytes:
        url = request.url
        match = self.table.lookup(request.host.decode("latin-1"), url.decode("latin-1"))
        if match is None:
            return 404
        service = match.service
        if service.checks_first or request.scheme == b"https":
            answer = self._answer_first(request, service)
            if answer:
                return answer
        target = service.balancer.pick()
        if target is None:
            return 503
        options = service.options
        request.pool = target.pool
        request.service = service.name_bytes
        request.forward_headers = options.forward_headers
        request.target_timeout = options.target_timeout
        if match.prefix == "/" or not options.strip_prefix:
            request.path = url
        else:
            request.path = match.upstream_path.encode("latin-1")
        return 0

    def _answer_first(self, request: Request, service: Service) -> int | bytes:
        """What the proxy answers itself before proxying (spec 5, 11.4): TLS mismatch (503), ACME
        HTTP-01 challenges (before any redirect, so they work over plain HTTP), then redirects."""
        secure = request.scheme == b"https"
        if secure and not service.tls_enabled:
            return 503
        if service.acme and not secure and request.url.startswith(_CHALLENGE_PREFIX):
            key_authorization = self.tokens.get(request.url[len(_CHALLENGE_PREFIX) :].decode("latin-1"))
            return 404 if key_authorization is None else text_response(key_authorization)
        return _redirect(request, service, secure)


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
