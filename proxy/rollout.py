"""Canary rollouts (spec 7.4): which requests go to the rollout targets instead of the active ones.

Only requests with a `kamal-rollout` cookie can: its value is in the allowlist, or its 32-bit FNV-1a hash
falls at or below the split point (percent of 2**32 - 1, compared as a float, exactly as kamal-proxy does,
so a user lands on the same side after switching proxies). The application sets the cookie; we never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COOKIE = b"kamal-rollout"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(value: bytes) -> int:
    """32-bit FNV-1a, Go's hash/fnv New32a."""
    digest = _FNV_OFFSET
    for byte in value:
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest


@dataclass(frozen=True)
class RolloutSplit:
    """`rollout set --percent N --list a,b`."""

    percentage: int = 0
    allowlist: frozenset[bytes] = frozenset()

    @property
    def split_point(self) -> float:
        return 0xFFFFFFFF * self.percentage / 100

    def chooses(self, cookie: bytes) -> bool:
        """Whether a request carrying this `kamal-rollout` value goes to the rollout targets."""
        return cookie in self.allowlist or fnv1a_32(cookie) <= self.split_point

    def to_json(self) -> dict[str, Any]:
        return {
            "percentage": self.percentage,
            "percentage_split_point": self.split_point,
            "allowlist": sorted(v.decode("utf-8", "replace") for v in self.allowlist),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutSplit:
        return cls(int(data.get("percentage", 0)), frozenset(v.encode() for v in data.get("allowlist") or ()))
