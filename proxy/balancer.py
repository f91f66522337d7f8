"""Round-robin over the healthy targets of one deploy: writers, and the read-only targets (spec 7.1, 7.3)."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.target import Target, TargetState


class LoadBalancer:
    """The targets of one deploy; the picks are on the hot path and only index a tuple."""

    def __init__(self, writers: Iterable[Target], readers: Iterable[Target] = ()) -> None:
        self.writers = tuple(writers)
        self.readers = tuple(readers)
        self.targets = self.writers + self.readers  # writers first, as `list` shows them
        self.healthy: tuple[Target, ...] = ()
        self.healthy_readers: tuple[Target, ...] = ()
        self._next = 0
        self._next_reader = 0

    def pick(self) -> Target | None:
        """A healthy writer."""
        healthy = self.healthy
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        self._next = (self._next + 1) % len(healthy)
        return healthy[self._next]

    def pick_reader(self) -> Target | None:
        """A healthy read-only target, else a writer (no reader up must not mean no service)."""
        readers = self.healthy_readers
        if not readers:
            return self.pick()
        self._next_reader = (self._next_reader + 1) % len(readers)
        return readers[self._next_reader]

    def set_state(self, target: Target, state: TargetState) -> bool:
        """Record a health change; True when it changed who gets traffic."""
        if target.state is state:
            return False
        target.state = state
        self.healthy = tuple(t for t in self.writers if t.healthy)
        self.healthy_readers = tuple(t for t in self.readers if t.healthy)
        return True

    @property
    def all_healthy(self) -> bool:
        return all(t.healthy for t in self.targets)

    @property
    def in_flight(self) -> int:
        return sum(t.pool.in_flight for t in self.targets)
