"""Maintenance (spec 8): a service running, paused (requests held) or stopped (503 with a message).

The state is a value in the service (so the routing table stays a value); the requests a paused service
holds live in its `WaitingRoom`, on the data plane, until the service resumes, stops, or `max_pause` runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.http.request import Request

RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"
_CODES = {RUNNING: 0, PAUSED: 1, STOPPED: 2}  # kamal-proxy's numbers in the state file
_NS = 1_000_000_000


@dataclass(frozen=True)
class PauseState:
    state: str = RUNNING
    stop_message: str = ""
    fail_after: float = 30.0  # seconds a paused request is held before it gets 504

    def to_json(self) -> dict[str, Any]:
        return {
            "state": _CODES[self.state],
            "stop_message": self.stop_message,
            "fail_after": round(self.fail_after * _NS),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PauseState:
        names = {code: name for name, code in _CODES.items()}
        return cls(
            names.get(data.get("state", 0), RUNNING),
            str(data.get("stop_message", "")),
            data.get("fail_after", 30 * _NS) / _NS,
        )


class WaitingRoom:
    """Requests held for one paused service. It stands where a target's pool would (`acquire`), so the
    client connections need nothing new: a held request is simply one whose target has not answered yet."""

    answers_itself = True  # no upstream head yet: it is built when the request is let through
    address_bytes = b""

    def __init__(self, release: Callable[[Request, Any], None], timeout: float) -> None:
        self._release = release
        self.timeout = timeout  # the service's `--max-pause`; a later `pause` may change it
        self._held: dict[Request, tuple[Any, asyncio.TimerHandle]] = {}
        self.loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        """Requests still waiting (not those whose client has gone meanwhile)."""
        return sum(1 for client, _ in self._held.values() if not client.closed)

    def acquire(self, request: Request, client: Any) -> None:
        timer = self.loop.call_later(self.timeout, self._expire, request)
        self._held[request] = (client, timer)

    def _expire(self, request: Request) -> None:
        held = self._held.pop(request, None)
        if held is not None and not held[0].closed:
            held[0].upstream_failed(request, 504)

    def release_all(self) -> None:
        """Let every held request go on (to its service's current state: running, or stopped)."""
        self._end_all(lambda request, client: self._release(request, client))

    def fail_all(self, status: int) -> None:
        """Answer every held request with `status` (its service is gone)."""
        self._end_all(lambda request, client: client.upstream_failed(request, status))

    def _end_all(self, end: Callable[[Request, Any], None]) -> None:
        """One request that cannot go on must not strand the others, nor fail the change that let them go."""
        held, self._held = self._held, {}
        for request, (client, timer) in held.items():
            timer.cancel()
            if client.closed:
                continue
            try:
                end(request, client)
            except Exception:
                if not client.closed:
                    client.upstream_failed(request, 500)
