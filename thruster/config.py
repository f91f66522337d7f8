"""pythrust's configuration: thruster's environment variables, with thruster's lookup rules.

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
    cache_size: int = 64 * 1024 * 1024
    max_cache_item_size: int = 1024 * 1024
    x_sendfile_enabled: bool = True
    x_sendfile_roots: tuple[str, ...] = ()  # ours: empty = any path the app names, as thruster
    x_accel_mapping: tuple[str, ...] = ()  # ours: DIR=URI pairs for X-Accel-Redirect (thruster/accel.py)
    gzip_compression_enabled: bool = True
    gzip_compression_disable_on_auth: bool = False
    gzip_compression_jitter: int = 32
    max_request_body: int = 0
    storage_path: str = "./storage/thruster"
    bad_gateway_page: str = "./public/502.html"
    http_port: int = 80
    https_port: int = 443
    http_idle_timeout: int = 60
    http_read_timeout: int = 30
    http_write_timeout: int = 30
    h2c_enabled: bool = False
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    eab_kid: str = ""
    eab_hmac_key: str = ""
    forward_headers: bool = True
    serve_dotfiles: bool = False  # ours: `pythrust serve` serves .well-known, .env... only when asked
    log_requests: bool = True
    debug: bool = False
    workers: int = 1  # ours: processes accepting on the ports (the app in the container wants the cores)


def lookup(env: Mapping[str, str], name: str) -> str | None:
    """The value of `name` under thruster's rules, or None when unset everywhere."""
    for prefix in PREFIXES:
        if prefix + name in env:
            return env[prefix + name]
    return env.get(name)


class ConfigError(ValueError):
    """A value of one of pythrust's own variables that cannot be used (thruster's own fall back)."""


def load(env: Mapping[str, str] | None = None) -> ThrusterConfig:
    """The configuration from `env` (the process environment by default); ConfigError for a bad value of
    a variable that is ours."""
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

    domains = _items(text("TLS_DOMAIN", ""), ",")
    return ThrusterConfig(
        tls_domains=domains,
        target_port=integer("TARGET_PORT", defaults.target_port),
        cache_size=integer("CACHE_SIZE", defaults.cache_size),
        max_cache_item_size=integer("MAX_CACHE_ITEM_SIZE", defaults.max_cache_item_size),
        x_sendfile_enabled=boolean("X_SENDFILE_ENABLED", defaults.x_sendfile_enabled),
        x_sendfile_roots=_items(text("X_SENDFILE_ROOTS", ""), ":"),
        x_accel_mapping=_items(text("X_ACCEL_MAPPING", ""), ","),
        gzip_compression_enabled=boolean("GZIP_COMPRESSION_ENABLED", defaults.gzip_compression_enabled),
        gzip_compression_disable_on_auth=boolean(
            "GZIP_COMPRESSION_DISABLE_ON_AUTH", defaults.gzip_compression_disable_on_auth
        ),
        gzip_compression_jitter=integer("GZIP_COMPRESSION_JITTER", defaults.gzip_compression_jitter),
        max_request_body=integer("MAX_REQUEST_BODY", defaults.max_request_body),
        storage_path=text("STORAGE_PATH", defaults.storage_path),
        bad_gateway_page=text("BAD_GATEWAY_PAGE", defaults.bad_gateway_page),
        http_port=integer("HTTP_PORT", defaults.http_port),
        https_port=integer("HTTPS_PORT", defaults.https_port),
        http_idle_timeout=integer("HTTP_IDLE_TIMEOUT", defaults.http_idle_timeout),
        http_read_timeout=integer("HTTP_READ_TIMEOUT", defaults.http_read_timeout),
        http_write_timeout=integer("HTTP_WRITE_TIMEOUT", defaults.http_write_timeout),
        h2c_enabled=boolean("H2C_ENABLED", defaults.h2c_enabled),
        acme_directory=text("ACME_DIRECTORY", defaults.acme_directory),
        eab_kid=text("EAB_KID", defaults.eab_kid),
        eab_hmac_key=text("EAB_HMAC_KEY", defaults.eab_hmac_key),
        # As thruster: trust the client's X-Forwarded-* only when not the TLS edge.
        forward_headers=boolean("FORWARD_HEADERS", not domains),
        serve_dotfiles=boolean("SERVE_DOTFILES", defaults.serve_dotfiles),
        log_requests=boolean("LOG_REQUESTS", defaults.log_requests),
        debug=boolean("DEBUG", defaults.debug),
        workers=_workers(lookup(env, "WORKERS")),
    )


def _workers(value: str | None) -> int:
    if value is None:
        return 1
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ConfigError(f"WORKERS must be a whole number of at least 1, not {value!r}")
    return int(value)


def _items(value: str, separator: str) -> tuple[str, ...]:
    """A list variable: items trimmed, empty ones dropped (so "" and " , " mean none)."""
    return tuple(item.strip() for item in value.split(separator) if item.strip())
