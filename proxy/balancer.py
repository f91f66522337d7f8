"""The targets of one deploy: writers and read-only targets (spec 7.1, 7.3), with their health, as a value.

Which healthy target a request goes to is decided per process, by a `pools.RoundRobin` bound to this
value when a table is installed; nothing here changes per request or per health check.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.target import Target, TargetState

_generations = itertools.count(1)


@dataclass(frozen=True)
class LoadBalancer:
    """`generation` tells one deploy's balancer from another's with the same addresses (a redeploy to
    the same target): each gets pools of its own, so a deploy still drains what ran on the one before.
    A health change keeps it."""

    writers: tuple[Target, ...]
    readers: tuple[Target, ...] = ()
    generation: int = dataclasses.field(default_factory=lambda: next(_generations))

    @classmethod
    def of(
        cls, writers: Iterable[str], readers: Iterable[str] = (), state: TargetState = TargetState.ADDING
    ) -> LoadBalancer:
        """Targets parsed from their addresses, all in `state`; raises ValueError for a bad address."""
        return cls(
            tuple(Target.parse(address, state) for address in writers),
            tuple(Target.parse(address, state) for address in readers),
        )

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.writers + self.readers  # writers first, as `list` shows them

    @property
    def healthy(self) -> tuple[Target, ...]:
        return tuple(t for t in self.writers if t.healthy)

    @property
    def healthy_readers(self) -> tuple[Target, ...]:
        return tuple(t for t in self.readers if t.healthy)

    @property
    def all_healthy(self) -> bool:
        return all(t.healthy for t in self.targets)

    def state_of(self, address: str) -> TargetState | None:
        return next((t.state for t in self.targets if t.address == address), None)

    def with_state(self, address: str, state: TargetState) -> LoadBalancer:
        """This balancer with the target at `address` in `state`; itself when nothing changes."""
        if self.state_of(address) in (state, None):
            return self

        def update(targets: tuple[Target, ...]) -> tuple[Target, ...]:
            return tuple(dataclasses.replace(t, state=state) if t.address == address else t for t in targets)

        return dataclasses.replace(self, writers=update(self.writers), readers=update(self.readers))
