"""A service: a name, where it is served (hosts x path prefixes), and its current targets.

Options are immutable values, saved in the state file with kamal-proxy's field
names (durations in nanoseconds) so its operators recognise them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.balancer import LoadBalancer
from proxy.health import HealthCheckConfig
from proxy.routing import normalize_hosts, normalize_prefixes, validate_host

_NS = 1_000_000_000


@dataclass(frozen=True)
class ServiceOptions:
    hosts: tuple[str, ...] = ("",)
    path_prefixes: tuple[str, ...] = ("/",)
    strip_prefix: bool = True
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    target_timeout: float = 30.0
    forward_headers: bool = True

    @classmethod
    def create(cls, hosts: list[str], path_prefixes: list[str], **rest: Any) -> ServiceOptions:
        """Normalise and validate; raises ValueError with a message for the operator."""
        normalized_hosts = normalize_hosts(hosts)
        for host in normalized_hosts:
            validate_host(host)
        return cls(hosts=normalized_hosts, path_prefixes=normalize_prefixes(path_prefixes), **rest)

    def to_json(self) -> dict[str, Any]:
        hc = self.health_check
        return {
            "options": {
                "hosts": [h for h in self.hosts if h],
                "path_prefixes": list(self.path_prefixes),
                "strip_prefix": self.strip_prefix,
            },
            "target_options": {
                "health_check_config": {
                    "path": hc.path,
                    "port": hc.port,
                    "interval": round(hc.interval * _NS),
                    "timeout": round(hc.timeout * _NS),
                    "host": hc.host,
                },
                "response_timeout": round(self.target_timeout * _NS),
                "forward_headers": self.forward_headers,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceOptions:
        options = data.get("options") or {}
        target_options = data.get("target_options") or {}
        hc = target_options.get("health_check_config") or {}
        defaults = HealthCheckConfig()
        return cls.create(
            hosts=options.get("hosts") or [],
            path_prefixes=options.get("path_prefixes") or [],
            strip_prefix=options.get("strip_prefix", True),
            health_check=HealthCheckConfig(
                path=hc.get("path", defaults.path),
                interval=hc.get("interval", defaults.interval * _NS) / _NS,
                timeout=hc.get("timeout", defaults.timeout * _NS) / _NS,
                port=hc.get("port", 0),
                host=hc.get("host", ""),
            ),
            target_timeout=target_options.get("response_timeout", 30 * _NS) / _NS,
            forward_headers=target_options.get("forward_headers", True),
        )


@dataclass(frozen=True)
class Service:
    """What the routing table points at. A deploy replaces the whole object."""

    name: str
    options: ServiceOptions
    balancer: LoadBalancer
    name_bytes: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_bytes", self.name.encode())

    # The routing table reads these three.
    @property
    def hosts(self) -> tuple[str, ...]:
        return self.options.hosts

    @property
    def path_prefixes(self) -> tuple[str, ...]:
        return self.options.path_prefixes

    @property
    def strip_prefix(self) -> bool:
        return self.options.strip_prefix

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.options.to_json(),
            "active_targets": [t.address for t in self.balancer.targets],
        }
