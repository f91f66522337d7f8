"""A service: a name, where it is served (hosts x path prefixes), and its current targets.

Options are immutable values, saved in the state file with kamal-proxy's field
names (durations in nanoseconds) so its operators recognise them. A Service is
a value too (it pickles and compares by its fields), so a routing table made of
them can be sent to another process; the fields derived from those for the
requests take no part in equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from proxy.balancer import LoadBalancer
from proxy.errorpages import ErrorPages, stop_page
from proxy.http.request import BufferPolicy
from proxy.logheaders import LogHeaders
from proxy.pause import RUNNING, STOPPED, PauseState
from proxy.responsehead import HeadRewrite
from proxy.rollout import RolloutSplit
from proxy.routing import normalize_hosts, normalize_prefixes, validate_host

_NS = 1_000_000_000


@dataclass(frozen=True)
class HealthCheckConfig:
    """How a service's targets are checked (proxy/health.py runs the checks, in the control process)."""

    path: str = "/up"
    interval: float = 1.0
    timeout: float = 5.0
    port: int = 0
    host: str = ""


@dataclass(frozen=True)
class TlsOptions:
    """How a service gets its certificate: files given by the operator, or an ACME CA."""

    enabled: bool = False
    certificate_path: str = ""
    private_key_path: str = ""
    redirect: bool = True
    acme_directory: str = ""  # "" is Let's Encrypt production, as in kamal-proxy
    acme_cache_path: str = ""
    acme_eab_kid: str = ""
    acme_eab_hmac_key: str = ""
    on_demand_url: str = ""  # certificates for any host this URL (or path of the service) approves

    @property
    def custom(self) -> bool:
        return bool(self.certificate_path)


@dataclass(frozen=True)
class ServiceOptions:
    hosts: tuple[str, ...] = ("",)
    path_prefixes: tuple[str, ...] = ("/",)
    strip_prefix: bool = True
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    target_timeout: float = 30.0
    forward_headers: bool = True
    tls: TlsOptions = field(default_factory=TlsOptions)
    canonical_host: str = ""
    buffering: BufferPolicy = field(default_factory=BufferPolicy)
    log_request_headers: tuple[str, ...] = ()
    log_response_headers: tuple[str, ...] = ()
    error_pages_path: str = ""
    writer_affinity_timeout: float = 1.0
    read_targets_accept_websockets: bool = False
    exclude_metrics_paths: tuple[str, ...] = ()
    client_ip_header: str = ""
    scope_cookie_paths: bool = False

    @classmethod
    def create(cls, hosts: list[str], path_prefixes: list[str], **rest: Any) -> ServiceOptions:
        """Normalise and validate; raises ValueError with a message for the operator."""
        normalized_hosts = normalize_hosts(hosts)
        for host in normalized_hosts:
            validate_host(host)
        options = cls(hosts=normalized_hosts, path_prefixes=normalize_prefixes(path_prefixes), **rest)
        problem = options._problem()
        if problem:
            raise ValueError(f"service options invalid: {problem}")
        return options

    def _problem(self) -> str | None:
        """kamal-proxy's option rules (spec 4.4), with its messages."""
        tls = self.tls
        if bool(tls.certificate_path) != bool(tls.private_key_path):
            return "--tls-certificate-path and --tls-private-key-path must be given together"
        if tls.on_demand_url:
            problem = _on_demand_problem(self, tls)
            if problem:
                return problem
        elif tls.enabled and "" in self.hosts:
            return "host must be set when using TLS"
        if tls.enabled and "/" not in self.path_prefixes:
            return "TLS settings must be specified on the root path service"
        if tls.enabled and not tls.custom and any("*" in h for h in self.hosts):
            return "automatic TLS does not support wildcards"
        named = [h for h in self.hosts if h]
        if self.canonical_host and named and self.canonical_host.lower() not in named:
            listed = " ".join(named)
            return f"canonical-host '{self.canonical_host}' must be present in the hosts list: [{listed}]"
        return None

    @property
    def acme(self) -> bool:
        """TLS with certificates from an ACME CA rather than the operator's files."""
        return self.tls.enabled and not self.tls.custom

    def to_json(self) -> dict[str, Any]:
        hc = self.health_check
        buffering = self.buffering
        return {
            "options": {
                "hosts": [h for h in self.hosts if h],
                "path_prefixes": list(self.path_prefixes),
                "strip_prefix": self.strip_prefix,
                "tls_enabled": self.tls.enabled,
                "tls_certificate_path": self.tls.certificate_path,
                "tls_private_key_path": self.tls.private_key_path,
                "tls_redirect": self.tls.redirect,
                "canonical_host": self.canonical_host,
                "acme_directory": self.tls.acme_directory,
                "acme_cache_path": self.tls.acme_cache_path,
                "acme_eab_kid": self.tls.acme_eab_kid,
                "acme_eab_hmac_key": self.tls.acme_eab_hmac_key,
                "tls_on_demand_url": self.tls.on_demand_url,
                "error_page_path": self.error_pages_path,
                "writer_affinity_timeout": round(self.writer_affinity_timeout * _NS),
                "read_targets_accept_websockets": self.read_targets_accept_websockets,
                "exclude_metrics_paths": list(self.exclude_metrics_paths),
                "client_ip_header": self.client_ip_header,
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
                "buffer_requests": buffering.requests,
                "buffer_responses": buffering.responses,
                "max_memory_buffer_size": buffering.memory,
                "max_request_body_size": buffering.max_request_body,
                "max_response_body_size": buffering.max_response_body,
                "log_request_headers": list(self.log_request_headers),
                "log_response_headers": list(self.log_response_headers),
                "forward_headers": self.forward_headers,
                "scope_cookie_paths": self.scope_cookie_paths,
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
            tls=TlsOptions(
                enabled=options.get("tls_enabled", False),
                certificate_path=options.get("tls_certificate_path", ""),
                private_key_path=options.get("tls_private_key_path", ""),
                redirect=options.get("tls_redirect", True),
                acme_directory=options.get("acme_directory", ""),
                acme_cache_path=options.get("acme_cache_path", ""),
                acme_eab_kid=options.get("acme_eab_kid", ""),
                acme_eab_hmac_key=options.get("acme_eab_hmac_key", ""),
                on_demand_url=options.get("tls_on_demand_url", ""),
            ),
            canonical_host=options.get("canonical_host", ""),
            buffering=BufferPolicy(
                requests=target_options.get("buffer_requests", False),
                responses=target_options.get("buffer_responses", False),
                memory=target_options.get("max_memory_buffer_size", BufferPolicy.memory),
                max_request_body=target_options.get("max_request_body_size", 0),
                max_response_body=target_options.get("max_response_body_size", 0),
            ),
            log_request_headers=tuple(target_options.get("log_request_headers") or ()),
            log_response_headers=tuple(target_options.get("log_response_headers") or ()),
            error_pages_path=options.get("error_page_path", ""),
            writer_affinity_timeout=options.get("writer_affinity_timeout", _NS) / _NS,
            read_targets_accept_websockets=options.get("read_targets_accept_websockets", False),
            exclude_metrics_paths=tuple(options.get("exclude_metrics_paths") or ()),
            client_ip_header=options.get("client_ip_header", ""),
            scope_cookie_paths=target_options.get("scope_cookie_paths", False),
        )


def _on_demand_problem(options: ServiceOptions, tls: TlsOptions) -> str | None:
    """kamal-proxy's rules for --tls-on-demand-url (spec 4.4)."""
    if not tls.enabled:
        return "TLS must be enabled to use a TLS on-demand URL"
    if any(options.hosts):
        return "cannot set hosts when using a TLS on-demand URL"
    if tls.custom:
        return "cannot use a custom TLS certificate with a TLS on-demand URL"
    if options.canonical_host:
        return "cannot set a canonical host when using a TLS on-demand URL"
    url = tls.on_demand_url
    if url.startswith("//"):
        return "tls-on-demand-url must be a path or an absolute http(s) URL"
    if url.startswith("/"):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        return f"unable to parse tls-on-demand-url: {exc}"
    if parts.scheme not in ("http", "https"):
        return f'unsupported scheme "{parts.scheme}" in tls-on-demand-url'
    if not parts.hostname:
        return "missing host in tls-on-demand-url"
    return None


@dataclass(frozen=True)
class Service:
    """What the routing table points at. A deploy, pause or rollout replaces the whole object."""

    name: str
    options: ServiceOptions
    balancer: LoadBalancer
    # A service without "/" among its prefixes follows the TLS settings (enabled, redirect) of the
    # service serving "/" for its first host (spec 4.5); the manager fills this in.
    inherited_tls: tuple[bool, bool] | None = None
    error_pages: ErrorPages | None = None  # loaded from `options.error_pages_path` at deploy
    pause: PauseState = field(default_factory=PauseState)
    rollout: LoadBalancer | None = None  # the rollout slot (spec 7.4): used only while `split` is set
    split: RolloutSplit | None = None
    # Read per request, so computed once here (from the fields above: not arguments, not compared).
    name_bytes: bytes = field(init=False, compare=False, repr=False)
    tls_enabled: bool = field(init=False, compare=False, repr=False)
    tls_redirect: bool = field(init=False, compare=False, repr=False)
    acme: bool = field(init=False, compare=False, repr=False)
    checks_first: bool = field(init=False, compare=False, repr=False)
    extended: bool = field(
        init=False, compare=False, repr=False
    )  # something beyond pick-and-proxy to do per request
    pages: dict[int, bytes] | None = field(
        init=False, compare=False, repr=False
    )  # the custom pages, rendered without a message
    stopped_pages: dict[int, bytes] = field(
        init=False, compare=False, repr=False
    )  # ... and the 503 of a stopped service
    log_headers: LogHeaders | None = field(init=False, compare=False, repr=False)
    log_rewrite: HeadRewrite | None = field(
        init=False, compare=False, repr=False
    )  # the response-head rewrite if only logging
    buffering: BufferPolicy | None = field(init=False, compare=False, repr=False)
    client_ip_header: bytes = field(init=False, compare=False, repr=False)
    health_path: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        options = self.options
        tls = options.tls
        enabled, redirect = self.inherited_tls or (tls.enabled, tls.redirect)
        pages = self.error_pages.rendered() if self.error_pages is not None else None
        stopped = {**(pages or {}), 503: stop_page(self.error_pages, self.pause.stop_message)}
        logged = options.log_request_headers or options.log_response_headers
        buffering = options.buffering if options.buffering.requests or options.buffering.responses else None
        set_ = object.__setattr__
        set_(self, "name_bytes", self.name.encode())
        set_(self, "tls_enabled", enabled)
        set_(self, "tls_redirect", redirect)
        set_(self, "acme", options.acme)
        set_(self, "checks_first", enabled or bool(options.canonical_host))
        set_(self, "pages", pages or None)
        set_(self, "stopped_pages", stopped)
        log_headers = (
            LogHeaders(options.log_request_headers, options.log_response_headers) if logged else None
        )
        set_(self, "log_headers", log_headers)
        set_(self, "log_rewrite", HeadRewrite(log_headers=log_headers) if log_headers is not None else None)
        set_(self, "buffering", buffering)
        set_(self, "client_ip_header", options.client_ip_header.lower().encode())
        set_(self, "health_path", options.health_check.path.encode())
        set_(
            self,
            "extended",
            bool(
                pages
                or logged
                or buffering
                or self.pause.state != RUNNING
                or self.split
                or self.balancer.readers
                or options.client_ip_header
                or options.scope_cookie_paths
            ),
        )

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

    @property
    def stopped(self) -> bool:
        return self.pause.state == STOPPED

    def to_json(self) -> dict[str, Any]:
        rollout = self.rollout
        return {
            "name": self.name,
            **self.options.to_json(),
            "active_targets": [t.address for t in self.balancer.writers],
            "active_readers": [t.address for t in self.balancer.readers],
            "rollout_targets": [t.address for t in rollout.writers] if rollout else None,
            "rollout_readers": [t.address for t in rollout.readers] if rollout else None,
            "pause_controller": self.pause.to_json(),
            "rollout_controller": self.split.to_json() if self.split else None,
        }
