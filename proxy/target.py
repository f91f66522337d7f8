"""A target: one upstream `host:port`, its connection pool and its health."""

from __future__ import annotations

import enum
import re

from proxy.http.upstream import UpstreamPool

_TARGET = re.compile(r"^(\w[-_.\w+]+)(?::(\d+))?$")


class TargetState(enum.Enum):
    ADDING = "adding"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


def parse_target(address: str) -> tuple[str, int]:
    """Split `host[:port]` (port 80 when absent); a clear ValueError otherwise."""
    found = _TARGET.match(address)
    port = int(found.group(2)) if found and found.group(2) else 80
    if not found or not 0 < port < 65536:
        raise ValueError(f'invalid target "{address}": expected host[:port], e.g. web-1:3000')
    return found.group(1), port


class Target:
    """One upstream server. Health is tracked per deploy: a redeploy makes new Targets."""

    def __init__(self, address: str) -> None:
        self.host, self.port = parse_target(address)
        self.address = f"{self.host}:{self.port}"
        self.header_line = b"X-Kamal-Target: %s\r\n" % self.address.encode()  # sent with every request
        self.pool = UpstreamPool(self.host, self.port)
        self.state = TargetState.ADDING
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        return self.state is TargetState.HEALTHY
