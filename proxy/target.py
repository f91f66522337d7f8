"""A target: one upstream `host:port` and its health, as the routing table holds it (a value).

Its connections are not here: each process keeps its own pool per target (proxy/pools.py), so a table
that names targets can be sent to another process and compared after the trip.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Target:
    """One upstream server of one deploy. A health change makes a new Target (and a new table)."""

    host: str
    port: int
    state: TargetState = TargetState.ADDING

    @classmethod
    def parse(cls, address: str, state: TargetState = TargetState.ADDING) -> Target:
        return cls(*parse_target(address), state)

    @property
    def address(self) -> str:
        """`host:port`, the port always written: what pools, logs and the state file name it by."""
        return f"{self.host}:{self.port}"

    @property
    def healthy(self) -> bool:
        return self.state is TargetState.HEALTHY
