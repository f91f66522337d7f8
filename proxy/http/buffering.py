"""Request and response buffering (kamal-proxy's --buffer-requests / --buffer-responses)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BufferPolicy:
    """What one service buffers, and its limits in bytes (0: no limit)."""

    requests: bool = False
    responses: bool = False
    memory: int = 1024 * 1024  # held in memory; the rest of a body goes to a temp file
    max_request_body: int = 0
    max_response_body: int = 0
