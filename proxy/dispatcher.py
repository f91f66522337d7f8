"""Per-request routing: Host and path to a service, service to a target.

The control plane swaps `table` for a new immutable RoutingTable on every
change; the data plane reads it once per request without a lock.
"""

from __future__ import annotations

from proxy.http.request import Request
from proxy.routing import RoutingTable


class ServiceDispatcher:
    def __init__(self) -> None:
        self.table = RoutingTable.build(())

    def route(self, request: Request) -> int:
        url = request.url
        match = self.table.lookup(request.host.decode("latin-1"), url.decode("latin-1"))
        if match is None:
            return 404
        service = match.service
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
