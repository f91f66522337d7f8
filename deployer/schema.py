"""The schema of `config/deploy.yml` (Kamal's, plus pydeploy's own keys): the merged YAML checked and read
into `deployer.settings` values.

Every check happens here, and every error names the path of the value (`servers.web.hosts[1]`), which is
what a person fixing the YAML needs; `deployer.config` adds the file. Readers take the raw value and its
path and return the typed value or raise `Invalid`.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path

from deployer.settings import (
    CANARY_SUFFIX,
    Accessory,
    AccessoryFile,
    BootSettings,
    Buffering,
    BuilderSettings,
    Credential,
    DeployConfig,
    EnvSettings,
    Healthcheck,
    JumpHost,
    LoggingSettings,
    ProxyRun,
    ProxySettings,
    RegistrySettings,
    Role,
    RolloutSplit,
    SshSettings,
    SslCertificate,
)

NAME = re.compile(r"[a-z0-9_-]+", re.IGNORECASE)
_SECRET_ENTRY = re.compile(r"[^:\s]+(?::[^:\s]+)?")
_JUMP_HOST = re.compile(r"(?:(?P<user>[^@:\s]+)@)?(?P<host>[^@:\s]+)(?::(?P<port>[0-9]+))?")
_RESERVED_LABELS = ("service", "role", "destination", "version")
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_TARGET = re.compile(r"\w[-\w.+]*(?::(?P<port>[0-9]+))?")
_PUBLISH = re.compile(
    r"(?:(?P<ip>[0-9.]+|\[[0-9A-Fa-f:.]+\]):(?P<host_port>[0-9]*):|(?P<host>[0-9]+):)?"
    r"(?P<container>[0-9]+)(?P<protocol>/(?:tcp|udp|sctp))?"
)

Where = tuple[str | int, ...]
Deprecation = tuple[Where, str]
_Reader = Callable[[object, Where], object]


def deep_merge(base: object, overlay: object) -> object:
    """`overlay` over `base`, as Kamal merges a destination file (and a role's proxy over the root's):
    mappings merge key by key, lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return overlay


class Invalid(Exception):
    """A problem at a path of the merged YAML; `load_config` adds the file the value came from."""

    def __init__(self, path: Where, message: str) -> None:
        super().__init__(message)
        self.path = path


def format_path(path: Where) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)


def _wrong(value: object, path: Where, expected: str) -> Invalid:
    return Invalid(path, f"expected {expected}, got {_describe(value)}")


def _str(value: object, path: Where) -> str:
    if not isinstance(value, str):
        raise _wrong(value, path, "a string")
    return value


def _bool(value: object, path: Where) -> bool:
    if not isinstance(value, bool):
        raise _wrong(value, path, "true or false")
    return value


def _int(value: object, path: Where) -> int:
    """A whole number of at least 1 (seconds, bytes, counts)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(value, path, "an integer")
    if value < 1:
        raise Invalid(path, f"must be at least 1, got {value}")
    return value


def _port(value: object, path: Where) -> int:
    port = _int(value, path)
    if port > 65535:
        raise Invalid(path, f"must be a port number (1-65535), got {port}")
    return port


def _name(value: object, path: Where) -> str:
    """Service, role and destination names end up in container names and file names."""
    name = _str(value, path)
    if not NAME.fullmatch(name):
        raise Invalid(path, f'may contain only letters, digits, "-" and "_", got {_describe(name)}')
    return name


def _scalar(value: object, path: Where) -> str:
    """A string, number or boolean as the string Docker will see (`true`, not `True`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise _wrong(value, path, "a string, number or boolean")


def _dict(value: object, path: Where) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _wrong(value, path, "a mapping")
    for key in value:
        if not isinstance(key, str):
            raise Invalid(path, f"keys must be strings, got {_describe(key)}")
    return value


def _mapping(value: object, path: Where, allowed: tuple[str, ...]) -> dict[str, object]:
    data = _dict(value, path)
    for key in data:
        if key not in allowed:
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {guess[0]}?" if guess else f"expected one of: {', '.join(allowed)}"
            raise Invalid((*path, key), f"unknown key ({hint})")
    return data


def _section(value: object, path: Where, readers: Mapping[str, _Reader]) -> dict[str, object]:
    """The keys present in a mapping, each through its reader, so dataclass defaults stay the defaults."""
    return _read(_mapping(value, path, tuple(readers)), path, readers)


def _read(data: Mapping[str, object], path: Where, readers: Mapping[str, _Reader]) -> dict[str, object]:
    return {key: reader(data[key], (*path, key)) for key, reader in readers.items() if key in data}


def _strings(value: object, path: Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _wrong(value, path, "a list")
    return tuple(_str(item, (*path, index)) for index, item in enumerate(value))


def _comma_list(value: object, path: Where) -> tuple[str, ...]:
    return tuple(part.strip() for part in _str(value, path).split(",") if part.strip())


def _string_or_list(value: object, path: Where) -> tuple[str, ...]:
    return (_str(value, path),) if not isinstance(value, list) else _strings(value, path)


def _scalars(value: object, path: Where) -> dict[str, str]:
    return {key: _scalar(item, (*path, key)) for key, item in _dict(value, path).items()}


def _string_map(value: object, path: Where) -> dict[str, str]:
    return {key: _str(item, (*path, key)) for key, item in _dict(value, path).items()}


def _labels(value: object, path: Where, reserved: tuple[str, ...] = _RESERVED_LABELS) -> dict[str, str]:
    labels = _scalars(value, path)
    for key in labels:
        if key in reserved:
            raise Invalid((*path, key), f"reserved label: pydeploy sets {', '.join(reserved)} itself")
    return labels


def _hosts(value: object, path: Where) -> tuple[str, ...]:
    hosts = _strings(value, path)
    for index, host in enumerate(hosts):
        if not host.strip():
            raise Invalid((*path, index), "expected a host name or address, got an empty string")
        if host in hosts[:index]:
            raise Invalid((*path, index), f"{host} is listed twice")
    if not hosts:
        raise Invalid(path, "needs at least one host")
    return hosts


def _volumes(value: object, path: Where) -> tuple[str, ...]:
    volumes = _strings(value, path)
    for index, volume in enumerate(volumes):
        host, _, container = volume.partition(":")
        if not host or not container:
            raise _wrong(volume, (*path, index), '"host:container"')
    return volumes


def _secret_entries(value: object, path: Where) -> tuple[str, ...]:
    entries = _strings(value, path)
    for index, entry in enumerate(entries):
        if not _SECRET_ENTRY.fullmatch(entry):
            raise _wrong(entry, (*path, index), "NAME or NAME:SECRET_NAME")
    return entries


def _env(value: object, path: Where) -> EnvSettings:
    """A plain mapping is all clear values; `clear`/`secret` (as in Kamal) make it structured."""
    data = _dict(value, path)
    if not {"clear", "secret", "tags"} & data.keys():
        return EnvSettings(clear=_scalars(data, path))
    return EnvSettings(**_section(data, path, {"clear": _scalars, "secret": _secret_entries}))


def _option(value: object, path: Where) -> str | bool | tuple[str, ...]:
    """`true` is a bare `--flag`, a list repeats the flag, anything else is its value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return tuple(_scalar(item, (*path, index)) for index, item in enumerate(value))
    return _scalar(value, path)


def _options(value: object, path: Where) -> dict[str, str | bool | tuple[str, ...]]:
    return {key: _option(item, (*path, key)) for key, item in _dict(value, path).items()}


def _credential(value: object, path: Where) -> Credential:
    if isinstance(value, str):
        return Credential(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return Credential(value[0], secret=True)
    raise _wrong(
        value, path, "a string, or a one-element list naming a secret like [KAMAL_REGISTRY_PASSWORD]"
    )


def _jump_host(value: object, path: Where) -> JumpHost:
    match = _JUMP_HOST.fullmatch(_str(value, path))
    if not match:
        raise _wrong(value, path, 'a jump host like "user@host:port" or "host"')
    return JumpHost(
        user=match["user"] or "root", host=match["host"], port=_port(int(match["port"] or 22), path)
    )


def _image(value: object, path: Where) -> str:
    image = _str(value, path)
    if not image or ":" in image or "@" in image:
        raise _wrong(image, path, 'a repository without a tag or registry host, like "acme/app"')
    return image


def _seconds(value: object, path: Where) -> float:
    """A duration of zero or more seconds: a number, or a Go/Kamal duration string ("2s", "500ms",
    "1m30s", "1h"). Whole seconds stay an `int`, so `f"{x}s"` gives "2s"."""
    expected = 'seconds, or a duration like "2s", "500ms" or "1m30s"'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _wrong(value, path, expected)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            amount = Fraction(text)
        elif _DURATION.fullmatch(text):
            amount = sum(
                (Fraction(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)),
                Fraction(0),
            )
        else:
            raise _wrong(value, path, expected)
    elif math.isfinite(value):
        amount = Fraction(value)
    else:
        raise _wrong(value, path, expected)
    if amount < 0:
        raise Invalid(path, f"must not be negative, got {_describe(value)}")
    return int(amount) if amount.denominator == 1 else float(amount)


def seconds_option(text: str) -> float:
    """A duration given on the command line (`--watch 1m30s`), read as deploy.yml reads one."""
    return _seconds(text, ())


def _duration(value: object, path: Where) -> float:
    """A duration of more than zero seconds (timeouts and intervals)."""
    seconds = _seconds(value, path)
    if seconds == 0:
        raise Invalid(path, f"must be more than 0 seconds, got {_describe(value)}")
    return seconds


def _whole_seconds(value: object, path: Where) -> int:
    """`stop_timeout` goes to `docker stop --time`, which takes whole seconds."""
    seconds = _seconds(value, path)
    if not isinstance(seconds, int):
        raise Invalid(path, f"docker stop takes whole seconds, got {_describe(value)}")
    return seconds


def _percent(value: object, path: Where) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise _wrong(value, path, "a percentage from 0 to 100")
    return value


def _secret_name(value: object, path: Where) -> str:
    name = _str(value, path)
    if not _SECRET_NAME.fullmatch(name):
        raise _wrong(value, path, "the name of a secret, like CERTIFICATE_PEM")
    return name


def _targets(value: object, path: Where) -> tuple[str, ...]:
    targets = _strings(value, path)
    for index, target in enumerate(targets):
        match = _TARGET.fullmatch(target)
        if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
            raise _wrong(target, (*path, index), 'a target "host:port", like "10.0.0.5:3000"')
    return targets


def _url_paths(value: object, path: Where) -> tuple[str, ...]:
    paths = _strings(value, path)
    for index, item in enumerate(paths):
        if not item.startswith("/"):
            raise _wrong(item, (*path, index), 'a path starting with "/"')
    return paths


def _is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address, the latter also in brackets as Docker writes it in a port mapping."""
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def _ips(value: object, path: Where) -> tuple[str, ...]:
    ips = _strings(value, path)
    for index, ip in enumerate(ips):
        if not _is_ip(ip):
            raise _wrong(ip, (*path, index), "an IPv4 or IPv6 address")
    return ips


def _ssl(value: object, path: Where) -> bool | SslCertificate:
    """`true`/`false` (automatic certificates), or the secrets holding a custom certificate and key."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise _wrong(value, path, "true, false or a mapping with certificate_pem and private_key_pem")
    data = _mapping(value, path, ("certificate_pem", "private_key_pem"))
    for key, other in (("certificate_pem", "private_key_pem"), ("private_key_pem", "certificate_pem")):
        if key not in data:
            raise Invalid(path, f"missing {key} (required when {other} is present)")
    return SslCertificate(
        **_read(data, path, {"certificate_pem": _secret_name, "private_key_pem": _secret_name})
    )


def _logging(value: object, path: Where) -> LoggingSettings:
    return LoggingSettings(**_section(value, path, {"driver": _str, "options": _scalars}))


def _boot_limit(value: object, path: Where) -> dict[str, int]:
    """`limit: 2` hosts at a time, or `limit: "25%"` of all hosts (at least one)."""
    if isinstance(value, str) and (match := re.fullmatch(r"\s*([0-9]+)\s*%\s*", value)):
        percent = int(match[1])
        if not 0 < percent <= 100:
            raise Invalid(path, f"a percentage must be from 1% to 100%, got {_describe(value)}")
        return {"limit_percent": percent}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"limit": _int(value, path)}
    raise _wrong(value, path, 'a number of hosts, or a percentage like "25%"')


def _boot(value: object, path: Where) -> BootSettings:
    fields = _section(value, path, {"limit": _boot_limit, "wait": _seconds, "parallel_roles": _bool})
    return BootSettings(**fields.pop("limit", {}), **fields)


def _registry(value: object, path: Where) -> RegistrySettings:
    return RegistrySettings(
        **_section(value, path, {"server": _str, "username": _credential, "password": _credential})
    )


def _existing_directory(root: Path, value: str, path: Where) -> str:
    if not (root / value).is_dir():
        raise Invalid(path, f"{value} is not a directory in {root}")
    return value


_HEALTHCHECK: dict[str, _Reader] = {
    "path": _str,
    "interval": _duration,
    "timeout": _duration,
    "port": _port,  # ours
    "host": _str,  # ours
}
_BUFFERING: dict[str, _Reader] = {
    "requests": _bool,
    "responses": _bool,
    "memory": _int,
    "max_request_body": _int,
    "max_response_body": _int,
}
_PROXY_RUN: dict[str, _Reader] = {
    "image": _str,  # ours: the whole image reference
    "registry": _str,
    "repository": _str,
    "version": _str,
    "http_port": _port,
    "https_port": _port,
    "publish": _bool,
    "bind_ips": _ips,
    "metrics_port": _port,
    "debug": _bool,
    "log_max_size": _str,
    "options": _options,
}
_PROXY: dict[str, _Reader] = {
    "host": _comma_list,
    "hosts": _strings,
    "ssl": _ssl,
    "ssl_redirect": _bool,
    "app_port": _port,
    "healthcheck": lambda value, path: Healthcheck(**_section(value, path, _HEALTHCHECK)),
    "response_timeout": _duration,
    "buffering": lambda value, path: Buffering(**_section(value, path, _BUFFERING)),
    "forward_headers": _bool,
    "path_prefix": _comma_list,
    "path_prefixes": _strings,
    "strip_path_prefix": _bool,
    "logging": lambda value, path: _section(
        value, path, {"request_headers": _strings, "response_headers": _strings}
    ),
    "image": _str,  # ours: the same as run.image
    "run": lambda value, path: _section(value, path, _PROXY_RUN),
    # ours: the rest of pyproxy's deploy options
    "canonical_host": _str,
    "tls_staging": _bool,
    "acme_directory": _str,
    "acme_eab_kid": _credential,
    "acme_eab_hmac_key": _credential,
    "tls_on_demand_url": _str,
    "read_targets": _targets,
    "read_target_websockets": _bool,
    "writer_affinity_timeout": _seconds,
    "client_ip_header": _str,
    "scope_cookie_paths": _bool,
    "exclude_metrics_paths": _url_paths,
    "targets": _targets,
    "rollout": lambda value, path: _rollout(value, path),
}
_PROXY_CONTAINER_KEYS = ("run", "image")
_ROLE: dict[str, _Reader] = {
    "cmd": _str,
    "options": _options,
    "labels": _labels,
    "env": _env,
    "stop_timeout": _whole_seconds,
    "logging": _logging,
    "asset_path": _str,
}
_ROLE_KEYS = ("hosts", *_ROLE, "proxy")
_ROOT: dict[str, _Reader] = {
    "service": _name,
    "image": _image,
    "registry": _registry,
    "env": _env,
    "volumes": _volumes,
    "builder": lambda value, path: BuilderSettings(
        **_section(
            value, path, {"arch": _string_or_list, "context": _str, "dockerfile": _str, "args": _scalars}
        )
    ),
    "ssh": lambda value, path: SshSettings(
        **_section(value, path, {"user": _str, "port": _port, "proxy": _jump_host, "keys": _strings})
    ),
    "labels": _labels,
    "aliases": _string_map,
    "asset_path": _str,
    "deploy_timeout": _duration,
    "drain_timeout": _duration,
    "retain_containers": _int,
    "minimum_version": _str,
    "boot": _boot,
    "hooks_path": _str,
    "error_pages_path": _str,
    "readiness_delay": _seconds,
    "stop_timeout": _whole_seconds,
    "logging": _logging,
}
_ROOT_KEYS = (*_ROOT, "servers", "primary_role", "proxy", "accessories")


def _proxy(value: object, path: Where) -> ProxySettings:
    fields = _section(value, path, _PROXY)
    for single, plural in (("host", "hosts"), ("path_prefix", "path_prefixes")):
        if single in fields:
            if plural in fields:
                raise Invalid(path, f'set "{single}" or "{plural}", not both')
            fields[plural] = fields.pop(single)
    if isinstance(fields.get("ssl"), SslCertificate):
        fields["certificate"], fields["ssl"] = fields["ssl"], True
    headers = fields.pop("logging", {})
    if "request_headers" in headers:
        fields["log_request_headers"] = headers["request_headers"]
    if "response_headers" in headers:
        fields["log_response_headers"] = headers["response_headers"]
    if "run" in fields or "image" in fields:
        fields["run"] = _proxy_run(fields.get("run", {}), fields.get("image"), path)
        fields["image"] = fields["run"].image
    proxy = ProxySettings(**fields)
    _check_tls(proxy, path)
    if proxy.canonical_host and proxy.hosts and proxy.canonical_host.lower() not in proxy.hosts:
        raise Invalid((*path, "canonical_host"), f"{proxy.canonical_host} is not one of the hosts")
    return proxy


def _proxy_run(run: Mapping[str, object], image: str | None, path: Where) -> ProxyRun:
    """The proxy container's settings; ours `proxy.image` is `run.image`, a whole image reference."""
    run_path = (*path, "run")
    if image is not None:
        if "image" in run:
            raise Invalid(path, 'set "image" or "run.image", not both')
        run = {**run, "image": image}
    if "image" in run and {"registry", "repository", "version"} & run.keys():
        raise Invalid(
            run_path, "set image (a whole image reference) or registry/repository/version, not both"
        )
    if run.get("publish") is False and {"http_port", "https_port", "bind_ips"} & run.keys():
        raise Invalid(run_path, "cannot set http_port, https_port or bind_ips when publish is false")
    return ProxyRun(**run)


def _check_tls(proxy: ProxySettings, path: Where) -> None:
    """The TLS options that only make sense together, as pyproxy would refuse them at deploy time."""
    acme = {
        "tls_staging": proxy.tls_staging,
        "acme_directory": proxy.acme_directory,
        "acme_eab_kid": proxy.acme_eab_kid,
        "acme_eab_hmac_key": proxy.acme_eab_hmac_key,
        "tls_on_demand_url": proxy.tls_on_demand_url,
    }
    for key, value in acme.items():
        if value and not proxy.ssl:
            raise Invalid((*path, key), "needs ssl: true")
        if value and proxy.certificate is not None:
            raise Invalid((*path, key), "a custom certificate (ssl.certificate_pem) does not use ACME")
    if (proxy.acme_eab_kid is None) != (proxy.acme_eab_hmac_key is None):
        raise Invalid(path, "set acme_eab_kid and acme_eab_hmac_key together")
    if proxy.tls_staging and proxy.acme_directory:
        raise Invalid(path, 'set "tls_staging" or "acme_directory", not both')
    on_demand = proxy.tls_on_demand_url
    if on_demand is not None:
        on_demand_path = (*path, "tls_on_demand_url")
        if proxy.hosts:
            raise Invalid(on_demand_path, "serves any host the URL allows, so it cannot be used with hosts")
        if proxy.canonical_host:
            raise Invalid(on_demand_path, "cannot be used with canonical_host")
        if not re.match(r"/(?!/)|https?://", on_demand):
            raise _wrong(on_demand, on_demand_path, "a path or an absolute http(s) URL")
    elif proxy.ssl and not proxy.hosts:
        raise Invalid((*path, "ssl"), "automatic SSL needs a host: set host or hosts")


def _rollout(value: object, path: Where) -> RolloutSplit:
    fields = _section(value, path, {"percentage": _percentage, "allowlist": _strings})
    if not fields:
        raise Invalid(path, "set percentage, allowlist or both")
    return RolloutSplit(**fields)


def _percentage(value: object, path: Where) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(value, path, "a whole percentage")
    if not 0 <= value <= 100:
        raise Invalid(path, f"must be between 0 and 100, got {value}")
    return value


def _own_proxy(value: object, path: Where) -> dict[str, object]:
    """A role's or accessory's proxy mapping; the proxy container itself is set in the root `proxy`."""
    data = _dict(value, path)
    for key in _PROXY_CONTAINER_KEYS:
        if key in data:
            raise Invalid((*path, key), "the proxy container is configured in the root proxy only")
    return data


def _role(
    name: str, value: object, path: Where, primary: bool, root_raw: object, root: ProxySettings
) -> Role:
    """A role from a host list or a mapping; the primary role is proxied unless `proxy: false`, others
    only with `proxy: true` or a proxy mapping (merged over the root `proxy`)."""
    if isinstance(value, list):
        data: dict[str, object] = {}
        hosts = _hosts(value, path)
    else:
        data = _mapping(value, path, _ROLE_KEYS)
        if "hosts" not in data:
            raise Invalid(path, 'missing required key "hosts"')
        hosts = _hosts(data["hosts"], (*path, "hosts"))
    proxy_value = data.get("proxy", primary)
    proxy_path = (*path, "proxy")
    if isinstance(proxy_value, bool):
        proxy = root if proxy_value else None
    elif isinstance(proxy_value, dict):
        proxy = _proxy(deep_merge(root_raw, _own_proxy(proxy_value, proxy_path)), proxy_path)
    else:
        raise _wrong(proxy_value, proxy_path, "true, false or a proxy mapping")
    automatic_ssl = proxy is not None and proxy.ssl and proxy.certificate is None
    if automatic_ssl and len(hosts) > 1:
        raise Invalid(
            path,
            f"automatic SSL works on a single server only, but this role has {len(hosts)} hosts: "
            "provide a certificate (ssl.certificate_pem/private_key_pem)",
        )
    return Role(name=name, hosts=hosts, proxy=proxy, **_read(data, path, _ROLE))


def _roles(value: object, primary: str, root_raw: object, root: ProxySettings) -> tuple[Role, ...]:
    """Roles with the primary first, then by name, as Kamal boots them; a plain host list is role `web`."""
    if isinstance(value, list):
        roles = [_role("web", value, ("servers",), primary == "web", root_raw, root)]
    elif isinstance(value, dict):
        roles = [
            _role(_name(name, ("servers", name)), item, ("servers", name), name == primary, root_raw, root)
            for name, item in sorted(_dict(value, ("servers",)).items())
        ]
    else:
        raise _wrong(value, ("servers",), "a list of hosts or a mapping of roles")
    names = [role.name for role in roles]
    for name in names:
        if name.endswith(CANARY_SUFFIX):
            reason = f'role names ending in "{CANARY_SUFFIX}" are kept for the canaries of `pydeploy rollout`'
            raise Invalid(("servers", name), reason)
    if primary not in names:
        raise Invalid(
            ("servers",), f'the primary role "{primary}" is not defined (roles: {", ".join(names) or "none"})'
        )
    ssl_hosts = [host for role in roles if role.proxy and role.proxy.ssl for host in role.proxy.hosts]
    shared = sorted({host for host in ssl_hosts if ssl_hosts.count(host) > 1})
    if shared:
        raise Invalid(("servers",), f"different roles can't share the same host for SSL: {', '.join(shared)}")
    return tuple(sorted(roles, key=lambda role: role.name != primary))


# Accessories


def _mount(value: object, path: Where, keys: tuple[str, ...]) -> dict[str, str]:
    """A "local:remote[:options]" string or a {local, remote, ...} mapping; `remote` is a container path."""
    if isinstance(value, str):
        local, _, rest = value.partition(":")
        remote, _, options = rest.partition(":")
        data = {"local": local, "remote": remote, **({"options": options} if options else {})}
    else:
        raw = _dict(value, path)
        if "owner" in raw:
            raise Invalid(
                (*path, "owner"), "not supported: pydeploy does not chown; set ownership in the image"
            )
        data = _read(_mapping(raw, path, keys), path, dict.fromkeys(keys, _str))
    if not data.get("local") or not data.get("remote"):
        raise _wrong(value, path, '"local:remote" or a mapping with local and remote')
    if not data["remote"].startswith("/"):
        raise Invalid(path, f"the remote path must be absolute, got {_describe(data['remote'])}")
    return data


def _accessory_files(value: object, path: Where, root: Path) -> tuple[AccessoryFile, ...]:
    """Files uploaded from the project (local paths relative to its root), which must exist."""
    if not isinstance(value, list):
        raise _wrong(value, path, "a list")
    files = []
    for index, item in enumerate(value):
        data = _mount(item, (*path, index), ("local", "remote", "mode", "options"))
        mode = data.get("mode")
        if mode is not None and not re.fullmatch(r"[0-7]{3,4}", mode):
            raise _wrong(mode, (*path, index, "mode"), 'an octal mode like "0644"')
        if not (root / data["local"]).exists():
            raise Invalid((*path, index), f"{data['local']} does not exist in {root}")
        files.append(AccessoryFile(**data))
    return tuple(files)


def _accessory_directories(value: object, path: Where) -> tuple[str, ...]:
    """Directories created on the host and mounted, as "local:remote[:options]" strings."""
    if not isinstance(value, list):
        raise _wrong(value, path, "a list")
    entries = []
    for index, item in enumerate(value):
        data = _mount(item, (*path, index), ("local", "remote", "options"))
        entries.append(":".join(data[key] for key in ("local", "remote", "options") if key in data))
    return tuple(entries)


def _publish(value: object, path: Where) -> str:
    """`port`: "3306" (published as 3306:3306), "8080:80" or "127.0.0.1:3306:3306"."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else _str(value, path)
    match = _PUBLISH.fullmatch(text)
    ports = [match[key] for key in ("host_port", "host", "container") if match[key]] if match else []
    if not match or not all(0 < int(port) < 65536 for port in ports) or not _is_ip(match["ip"] or "::"):
        raise _wrong(value, path, 'a port like "3306", "8080:80" or "127.0.0.1:3306:3306"')
    if match["ip"] is None and match["host"] is None:
        return f"{match['container']}:{match['container']}{match['protocol'] or ''}"
    return text


def _accessory_image(value: object, path: Where) -> str:
    image = _str(value, path)
    if not image or any(character.isspace() for character in image):
        raise _wrong(value, path, 'an image like "postgres:16"')
    return image


_ACCESSORY: dict[str, _Reader] = {
    "service": _name,
    "image": _accessory_image,
    "registry": _registry,
    "cmd": _str,
    "port": _publish,
    "env": _env,
    "directories": _accessory_directories,
    "volumes": _volumes,
    "options": _options,
    "labels": lambda value, path: _labels(value, path, reserved=("service",)),
    "network": _name,
}
_ACCESSORY_HOSTS = ("host", "hosts", "role", "roles")
_ACCESSORY_KEYS = (*_ACCESSORY, *_ACCESSORY_HOSTS, "files", "proxy", "tag", "tags")


def _accessory(
    name: str, value: object, path: Where, service: str, roles: tuple[Role, ...], root: Path
) -> Accessory:
    data = _mapping(value, path, _ACCESSORY_KEYS)
    for key in ("tag", "tags"):
        if key in data:
            raise Invalid(
                (*path, key), "host tags are not supported by pydeploy: use host, hosts, role or roles"
            )
    placement = [key for key in _ACCESSORY_HOSTS if key in data]
    if len(placement) != 1:
        given = f" (got {', '.join(placement)})" if placement else ""
        raise Invalid(path, f"specify exactly one of host, hosts, role or roles{given}")
    if "image" not in data:
        raise Invalid(path, 'missing required key "image"')
    fields = _read(data, path, _ACCESSORY)
    registry = fields.get("registry")
    if registry is not None and registry.server:
        fields["image"] = f"{registry.server}/{fields['image']}"
    if "files" in data:
        fields["files"] = _accessory_files(data["files"], (*path, "files"), root)
    if "proxy" in data:
        proxy_path = (*path, "proxy")
        fields["proxy"] = _proxy(_own_proxy(data["proxy"], proxy_path), proxy_path)
    key = placement[0]
    return Accessory(
        name=name,
        service=fields.pop("service", f"{service}-{name}"),
        hosts=_accessory_hosts(name, key, data[key], (*path, key), roles),
        **fields,
    )


def _accessory_hosts(
    accessory: str, key: str, value: object, path: Where, roles: tuple[Role, ...]
) -> tuple[str, ...]:
    """The hosts from `host`/`hosts` (each must be a host of a role) or from `role`/`roles`."""
    by_name = {role.name: role for role in roles}
    if key in ("role", "roles"):
        names = (_str(value, path),) if key == "role" else _strings(value, path)
        for index, name in enumerate(names):
            if name not in by_name:
                where = path if key == "role" else (*path, index)
                raise Invalid(where, f'unknown role "{name}" (roles: {", ".join(by_name)})')
        return tuple(dict.fromkeys(host for name in names for host in by_name[name].hosts))
    hosts = (_str(value, path),) if key == "host" else _hosts(value, path)
    known = {host for role in roles for host in role.hosts}
    for index, host in enumerate(hosts):
        if host not in known:
            where = path if key == "host" else (*path, index)
            raise Invalid(where, f"accessory {accessory} is placed on {host}, which is in no role of servers")
    return hosts


def _accessories(value: object, service: str, roles: tuple[Role, ...], root: Path) -> tuple[Accessory, ...]:
    accessories = _dict(value, ("accessories",))
    return tuple(
        _accessory(_name(name, ("accessories", name)), item, ("accessories", name), service, roles, root)
        for name, item in accessories.items()
    )


# Kamal 1 keys, still in blog posts: read as what they became, each with a warning.

_MAX_ATTEMPTS = (
    "is Kamal 1's: the proxy retries the health check until deploy_timeout; set that instead (ignored)"
)
_KAMAL1_HEALTHCHECK: dict[str, _Reader] = {
    "path": _str,
    "interval": _duration,
    "port": _port,
    "max_attempts": _int,
    "cord": _str,
    "log_lines": _int,
    "cmd": _str,
}


def _kamal1(top: dict[str, object], warnings: list[Deprecation]) -> dict[str, object]:
    """`top` without its Kamal 1 keys: `traefik` is dropped, the top-level `healthcheck` becomes
    `proxy.healthcheck` (its `port` `proxy.app_port`), `max_attempts` in any proxy healthcheck is dropped."""
    top = dict(top)
    if "traefik" in top:
        del top["traefik"]
        warnings.append(
            (("traefik",), "is Kamal 1's: pyproxy replaces Traefik, configure proxy instead (ignored)")
        )
    if "healthcheck" in top:
        old = _section(top.pop("healthcheck"), ("healthcheck",), _KAMAL1_HEALTHCHECK)
        proxy = _dict(top.get("proxy", {}), ("proxy",))
        moved = {key: old[key] for key in ("path", "interval") if key in old}
        if moved:
            warnings.append(
                (
                    ("healthcheck",),
                    f"is Kamal 1's: {' and '.join(moved)} now go in proxy.healthcheck (read there)",
                )
            )
        if "port" in old:
            outcome = "ignored, app_port is set" if "app_port" in proxy else "read as that"
            proxy = {"app_port": old["port"], **proxy}
            warnings.append((("healthcheck", "port"), f"is Kamal 1's: it is proxy.app_port now ({outcome})"))
        if "max_attempts" in old:
            warnings.append((("healthcheck", "max_attempts"), _MAX_ATTEMPTS))
        for key in ("cord", "log_lines", "cmd"):
            if key in old:
                warnings.append(
                    (("healthcheck", key), "is Kamal 1's: the proxy checks health over HTTP now (ignored)")
                )
        top["proxy"] = deep_merge({"healthcheck": moved}, proxy)
    top["proxy"] = _drop_max_attempts(top.get("proxy", {}), ("proxy",), warnings)
    for section in ("servers", "accessories"):
        entries = top.get(section)
        if isinstance(entries, dict):
            top[section] = {
                name: _kamal1_entry(entry, (section, name), warnings) for name, entry in entries.items()
            }
    return top


def _kamal1_entry(entry: object, path: Where, warnings: list[Deprecation]) -> object:
    """A role or accessory without its Kamal 1 keys: a role's `traefik: true|false` is `proxy` now, its
    own `healthcheck` is dropped."""
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry)
    if path[0] == "servers" and isinstance(entry.get("traefik"), bool):
        traefik = entry.pop("traefik")
        outcome = "ignored, proxy is set" if "proxy" in entry else "read as that"
        entry.setdefault("proxy", traefik)
        warnings.append(
            ((*path, "traefik"), f"is Kamal 1's: it is proxy: {str(traefik).lower()} now ({outcome})")
        )
    if path[0] == "servers" and "healthcheck" in entry:
        _section(entry.pop("healthcheck"), (*path, "healthcheck"), _KAMAL1_HEALTHCHECK)
        warnings.append(
            ((*path, "healthcheck"), "is Kamal 1's: the role's proxy.healthcheck is read instead (ignored)")
        )
    if isinstance(entry.get("proxy"), dict):
        entry["proxy"] = _drop_max_attempts(entry["proxy"], (*path, "proxy"), warnings)
    return entry


def _drop_max_attempts(proxy: object, path: Where, warnings: list[Deprecation]) -> object:
    healthcheck = proxy.get("healthcheck") if isinstance(proxy, dict) else None
    if not isinstance(healthcheck, dict) or "max_attempts" not in healthcheck:
        return proxy
    where = (*path, "healthcheck", "max_attempts")
    _int(healthcheck["max_attempts"], where)
    warnings.append((where, _MAX_ATTEMPTS))
    return {
        **proxy,
        "healthcheck": {key: value for key, value in healthcheck.items() if key != "max_attempts"},
    }


def build(
    data: object,
    destination: str | None,
    resolve_version: Callable[[BuilderSettings], str],
    root: Path,
) -> tuple[DeployConfig, list[Deprecation]]:
    """The settings from the merged YAML (`root` is the project, for the files it names), and the
    deprecation warnings (path, message) for the Kamal 1 keys found."""
    warnings: list[Deprecation] = []
    raw = _dict(data, ())
    top = _kamal1({key: value for key, value in raw.items() if not key.startswith("x-")}, warnings)
    top = _mapping(top, (), _ROOT_KEYS)
    for key in ("service", "image", "servers"):
        if key not in top:
            raise Invalid((), f'missing required key "{key}"')
    fields = _read(top, (), _ROOT)
    if "labels" in fields:
        fields["custom_labels"] = fields.pop("labels")
    if "error_pages_path" in fields:
        _existing_directory(root, fields["error_pages_path"], ("error_pages_path",))
    root_raw = top.get("proxy", {})
    proxy = _proxy(root_raw, ("proxy",))
    primary = _name(top.get("primary_role", "web"), ("primary_role",))
    builder = fields.get("builder", BuilderSettings())
    roles = _roles(top["servers"], primary, root_raw, proxy)
    if "accessories" in top:
        fields["accessories"] = _accessories(top["accessories"], fields["service"], roles, root)
    config = DeployConfig(
        **fields,
        proxy=proxy,
        roles=roles,
        primary_role=primary,
        destination=destination,
        version=resolve_version(builder),
    )
    return config, warnings
