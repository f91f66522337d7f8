"""Round-robin over the healthy targets of one deploy."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.target import Target, TargetState


class LoadBalancer:
    """The targets of one deploy; `pick` is on the hot path and only indexes a tuple."""

    def __init__(self, targets: Iterable[Target]) -> None:
        self.targets = tuple(targets)
        self.healthy: tuple[Target, ...] = ()
        self._next = 0

    def pick(self) -> Target | None:
        healthy = self.healthy
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        self._next = (self._next + 1) % len(healthy)
        return healthy[self._next]

    def set_state(self, target: Target, state: TargetState) -> bool:
        """Record a health change; True when it changed who gets traffic."""
        if target.state is state:
            return False
        target.state = state
        self.healthy = tuple(t for t in self.targets if t.healthy)
        return True

    @property
    def all_healthy(self) -> bool:
        return all(t.healthy for t in self.targets)

    @property
    def in_flight(self) -> int:
        return sum(t.pool.in_flight for t in self.targets)
