"""pythrust's configuration: thruster's environment variables, with thruster's lookup rules.

Only the variables pythrust acts on so far are read (see README: pythrust); the
cache, compression, X-Sendfile and TLS ones come with those features.

Every variable NAME is read from `PYTHRUST_NAME`, else `THRUSTER_NAME`, else
`NAME`, else its default. A prefixed variable counts when set at all, even
empty (as thruster). A number or boolean that does not parse falls back to the
default without a word, as thruster does, so an app's existing environment
behaves the same under pythrust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PREFIXES = ("PYTHRUST_", "THRUSTER_")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class ThrusterConfig:
    tls_domains: tuple[str, ...] = ()
    target_port: int = 3000
    bad_gateway_page: str = "./public/502.html"
    http_port: int = 80
    http_idle_timeout: int = 60
    http_read_timeout: int = 30
    http_write_timeout: int = 30
    max_request_body: int = 0
    h2c_enabled: bool = False
    forward_headers: bool = True
    log_requests: bool = True
    debug: bool = False


def lookup(env: Mapping[str, str], name: str) -> str | None:
    """The value of `name` under thruster's rules, or None when unset everywhere."""
    for prefix in PREFIXES:
        if prefix + name in env:
            return env[prefix + name]
    return env.get(name)


def load(env: Mapping[str, str] | None = None) -> ThrusterConfig:
    """The configuration from `env` (the process environment by default)."""
    env = os.environ if env is None else env
    defaults = ThrusterConfig()

    def integer(name: str, default: int) -> int:
        value = lookup(env, name)
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    def boolean(name: str, default: bool) -> bool:
        value = lookup(env, name)
        return True if value in _TRUE else False if value in _FALSE else default

    def text(name: str, default: str) -> str:
        value = lookup(env, name)
        return default if value is None else value

    domains = tuple(d.strip() for d in text("TLS_DOMAIN", "").split(",") if d.strip())
    return ThrusterConfig(
        tls_domains=domains,
        target_port=integer("TARGET_PORT", defaults.target_port),
        bad_gateway_page=text("BAD_GATEWAY_PAGE", defaults.bad_gateway_page),
        http_port=integer("HTTP_PORT", defaults.http_port),
        http_idle_timeout=integer("HTTP_IDLE_TIMEOUT", defaults.http_idle_timeout),
        http_read_timeout=integer("HTTP_READ_TIMEOUT", defaults.http_read_timeout),
        http_write_timeout=integer("HTTP_WRITE_TIMEOUT", defaults.http_write_timeout),
        max_request_body=integer("MAX_REQUEST_BODY", defaults.max_request_body),
        h2c_enabled=boolean("H2C_ENABLED", defaults.h2c_enabled),
        # As thruster: trust the client's X-Forwarded-* only when not the TLS edge.
        forward_headers=boolean("FORWARD_HEADERS", not domains),
        log_requests=boolean("LOG_REQUESTS", defaults.log_requests),
        debug=boolean("DEBUG", defaults.debug),
    )
