"""`config/deploy.yml` in Kamal's schema, validated once into typed, frozen settings.

Everything after loading trusts these values, so every check happens here, and every error names the file
and the path of the value (`servers.web.hosts[1]`), which is what a person fixing the YAML needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deployer import erb

CONFIG_FILE = "config/deploy.yml"
REDACTED = "[REDACTED]"
_NAME = re.compile(r"[a-z0-9_-]+", re.IGNORECASE)
_DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SECRET_ENTRY = re.compile(r"[^:\s]+(?::[^:\s]+)?")
_JUMP_HOST = re.compile(r"(?:(?P<user>[^@:\s]+)@)?(?P<host>[^@:\s]+)(?::(?P<port>[0-9]+))?")
_RESERVED_LABELS = ("service", "role", "destination", "version")

_Where = tuple[str | int, ...]
_Reader = Callable[[object, _Where], object]


class ConfigError(Exception):
    """A configuration or secrets problem, worded for the person who has to fix it."""


@dataclass(frozen=True)
class Healthcheck:
    """Durations are seconds; `port`/`host` (ours) check another port or send another Host header."""

    path: str = "/up"
    interval: float = 1
    timeout: float = 5
    port: int | None = None
    host: str | None = None


@dataclass(frozen=True)
class Buffering:
    """`None` leaves the limit to the proxy's own default."""

    requests: bool = True
    responses: bool = True
    memory: int | None = None
    max_request_body: int | None = None
    max_response_body: int | None = None


@dataclass(frozen=True)
class SslCertificate:
    """A custom certificate for `proxy.ssl`: the NAMES of the secrets holding the PEM texts."""

    certificate_pem: str
    private_key_pem: str


@dataclass(frozen=True)
class ProxyRun:
    """How the proxy container itself runs (Kamal's `proxy.run`, root `proxy` only); `image` is ours."""

    image: str | None = None
    registry: str | None = None
    repository: str | None = None
    version: str | None = None
    http_port: int = 80
    https_port: int = 443
    publish: bool = True
    bind_ips: tuple[str, ...] = ()
    metrics_port: int | None = None
    debug: bool = False
    log_max_size: str = "10m"
    options: Mapping[str, str | bool | tuple[str, ...]] = field(default_factory=dict)

    def image_ref(self, default: str) -> str:
        """The image the proxy container runs: ours `image`, else `[registry/]repository:version`, else
        `default`."""
        if self.image:
            return self.image
        if self.repository:
            name = f"{self.registry}/{self.repository}" if self.registry else self.repository
            return f"{name}:{self.version}" if self.version else name
        return default


@dataclass(frozen=True)
class ProxySettings:
    """How a role is published through the proxy; `None` values keep the proxy's own default.

    Beyond Kamal's keys, every pyproxy deploy option is reachable (canonical_host ... rollout_percent).
    """

    hosts: tuple[str, ...] = ()
    ssl: bool = False
    app_port: int = 80
    healthcheck: Healthcheck = Healthcheck()
    response_timeout: float = 30
    buffering: Buffering = Buffering()
    forward_headers: bool | None = None
    path_prefixes: tuple[str, ...] = ()
    image: str | None = None  # ours: the pyproxy image the proxy container runs (root `proxy` only)
    certificate: SslCertificate | None = None
    ssl_redirect: bool | None = None
    strip_path_prefix: bool | None = None
    log_request_headers: tuple[str, ...] | None = None
    log_response_headers: tuple[str, ...] = ()
    run: ProxyRun | None = None
    canonical_host: str | None = None
    tls_staging: bool = False
    acme_directory: str | None = None
    acme_eab_kid: Credential | None = None
    acme_eab_hmac_key: Credential | None = None
    tls_on_demand_url: str | None = None
    read_targets: tuple[str, ...] = ()
    read_target_websockets: bool | None = None
    writer_affinity_timeout: float | None = None
    client_ip_header: str | None = None
    scope_cookie_paths: bool | None = None
    exclude_metrics_paths: tuple[str, ...] = ()
    load_balancer: str | None = None
    targets: tuple[str, ...] = ()
    rollout_percent: int | None = None


@dataclass(frozen=True)
class EnvSettings:
    """Clear values go on the command line; secrets (`NAME` or `NAME:SECRET_KEY`) only into env files."""

    clear: Mapping[str, str] = field(default_factory=dict)
    secret: tuple[str, ...] = ()

    def secret_sources(self) -> dict[str, str]:
        """Env var name -> the secret it is read from."""
        sources = {}
        for entry in self.secret:
            name, _, key = entry.partition(":")
            sources[name] = key or name
        return sources


@dataclass(frozen=True)
class LoggingSettings:
    """Kamal's `logging:`; no driver and no options means Docker's default with `--log-opt max-size=10m`."""

    driver: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BootSettings:
    """How many hosts boot at once and the pause between groups; roles always boot one after another
    (`parallel_roles` is read so Kamal configs load, but pydeploy boots roles sequentially)."""

    limit: int | None = None
    limit_percent: int | None = None
    wait: float = 0
    parallel_roles: bool = False

    def group_size(self, total_hosts: int) -> int:
        """Hosts per boot group: `limit`, or `limit_percent` of them (at least one), else all at once."""
        if self.limit is not None:
            return self.limit
        if self.limit_percent is not None:
            return max(1, total_hosts * self.limit_percent // 100)
        return total_hosts


@dataclass(frozen=True)
class Role:
    """A named group of hosts running the same container; `proxy=None` means not behind the proxy."""

    name: str
    hosts: tuple[str, ...]
    cmd: str | None = None
    options: Mapping[str, str | bool | tuple[str, ...]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    env: EnvSettings = EnvSettings()
    proxy: ProxySettings | None = None
    stop_timeout: float | None = None
    logging: LoggingSettings | None = None
    asset_path: str | None = None


@dataclass(frozen=True)
class Credential:
    """A registry credential: a literal, or (`secret=True`) the name of a secret looked up at deploy time."""

    value: str
    secret: bool = False

    def resolve(self, secrets: Mapping[str, str]) -> str:
        """The credential itself; after `secrets.check_referenced`, a named secret is known to exist."""
        return secrets[self.value] if self.secret else self.value


@dataclass(frozen=True)
class RegistrySettings:
    """`server=None` is Docker Hub; no credentials means no `docker login`."""

    server: str | None = None
    username: Credential | None = None
    password: Credential | None = None


@dataclass(frozen=True)
class BuilderSettings:
    """`context=None` builds from a clean clone of HEAD, as Kamal does; `arch=()` builds for the local one."""

    arch: tuple[str, ...] = ()
    context: str | None = None
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AccessoryFile:
    """A local file (relative to the project root) uploaded to `remote` in the container; `mode` as chmod."""

    local: str
    remote: str
    mode: str | None = None


@dataclass(frozen=True)
class Accessory:
    """A long-lived companion container (database, cache); `hosts` is resolved from host/hosts/role/roles
    at load, `directories` are Kamal's "local:remote" strings."""

    name: str
    service: str
    image: str
    hosts: tuple[str, ...]
    port: str | None = None
    cmd: str | None = None
    env: EnvSettings = EnvSettings()
    files: tuple[AccessoryFile, ...] = ()
    directories: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    options: Mapping[str, str | bool | tuple[str, ...]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    registry: RegistrySettings | None = None
    proxy: ProxySettings | None = None
    network: str | None = None


@dataclass(frozen=True)
class JumpHost:
    user: str
    host: str
    port: int = 22


@dataclass(frozen=True)
class SshSettings:
    user: str = "root"
    port: int = 22
    proxy: JumpHost | None = None
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeployConfig:
    """The merged, validated configuration; `roles` starts with the primary role, the rest by name."""

    service: str
    image: str
    version: str
    roles: tuple[Role, ...]
    destination: str | None = None
    primary_role: str = "web"
    proxy: ProxySettings = ProxySettings()
    registry: RegistrySettings = RegistrySettings()
    env: EnvSettings = EnvSettings()
    volumes: tuple[str, ...] = ()
    builder: BuilderSettings = BuilderSettings()
    ssh: SshSettings = SshSettings()
    custom_labels: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    asset_path: str | None = None
    deploy_timeout: float = 30
    drain_timeout: float = 30
    retain_containers: int = 5
    minimum_version: str | None = None
    accessories: tuple[Accessory, ...] = ()
    boot: BootSettings = BootSettings()
    hooks_path: str = ".kamal/hooks"
    error_pages_path: str | None = None
    readiness_delay: float = 7
    stop_timeout: float | None = None
    logging: LoggingSettings = LoggingSettings()
    warnings: tuple[str, ...] = ()

    @property
    def service_with_destination(self) -> str:
        """`<svc>` or `<svc>-<dest>`: names the lock, the audit log and the per-app directories."""
        return f"{self.service}-{self.destination}" if self.destination else self.service

    @property
    def repository(self) -> str:
        """`<server>/<image>`, or `<image>` on Docker Hub."""
        return f"{self.registry.server}/{self.image}" if self.registry.server else self.image

    def all_hosts(self) -> list[str]:
        """Every host once, primary role's hosts first."""
        return list(dict.fromkeys(host for role in self.roles for host in role.hosts))

    def container_prefix(self, role: Role) -> str:
        """`<svc>-<role>[-<dest>]`: starts every container name of the role and names it in the proxy."""
        prefix = f"{self.service}-{role.name}"
        return f"{prefix}-{self.destination}" if self.destination else prefix

    def container_name(self, role: Role, version: str) -> str:
        return f"{self.container_prefix(role)}-{version}"

    def labels(self, role: Role, version: str) -> dict[str, str]:
        """Container labels: the ones pydeploy filters by (an empty `destination` without one, as Kamal),
        then the root's custom labels, then the role's."""
        return {
            "service": self.service,
            "role": role.name,
            "destination": self.destination or "",
            "version": version,
            **self.custom_labels,
            **role.labels,
        }

    def accessory(self, name: str) -> Accessory:
        """The accessory called `name`; an unknown name is a `ConfigError` listing the known ones."""
        for accessory in self.accessories:
            if accessory.name == name:
                return accessory
        known = ", ".join(accessory.name for accessory in self.accessories) or "none are configured"
        raise ConfigError(f'No accessory "{name}" (accessories: {known})')

    def stop_timeout_for(self, role: Role) -> float | None:
        """Seconds `docker stop` waits for the role's container: its own `stop_timeout`, else the root's."""
        return role.stop_timeout if role.stop_timeout is not None else self.stop_timeout

    def env_for(self, role: Role) -> EnvSettings:
        """The root env overlaid by the role's: clear values merge (the role wins), secrets are unioned."""
        return EnvSettings(
            clear={**self.env.clear, **role.env.clear},
            secret=tuple(dict.fromkeys(self.env.secret + role.env.secret)),
        )

    def as_dict(self) -> dict[str, object]:
        """Every setting as plain dicts and lists for printing. A literal registry password is hidden here;
        values that came from secrets are hidden by `secrets.redact_data`."""
        data = {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}
        password = self.registry.password
        if password is not None and not password.secret:
            data["registry"] = {**_plain(self.registry), "password": REDACTED}
        return data


def load_config(
    root: Path,
    destination: str | None = None,
    version: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str = CONFIG_FILE,
) -> DeployConfig:
    """Read `config_file` (`config/deploy.yml`) under `root`, deep-merge `<stem>.<destination>.yml` beside it
    over it (mappings merge, lists and scalars are replaced) and validate the result.

    The version is `version`, else `$VERSION`, else git's HEAD (with an `_uncommitted_<hex>` suffix for a
    dirty tree when `builder.context` builds from the working directory). `environ` (default: the process
    environment, plus `KAMAL_DESTINATION`) feeds the `${VAR}` / `<%= ENV[...] %>` tags.
    """
    env = dict(os.environ if environ is None else environ)
    overlay_file = None
    if destination is not None:
        if not _NAME.fullmatch(destination):
            raise ConfigError(f'Destination "{destination}" may contain only letters, digits, "-" and "_"')
        env["KAMAL_DESTINATION"] = destination
        stem, dot, suffix = config_file.rpartition(".")
        overlay_file = f"{stem}.{destination}.{suffix}" if dot else f"{config_file}.{destination}"
    data = _load_yaml(root, config_file, env)
    if data is None:
        raise ConfigError(f"{config_file}: the file is empty; it needs at least service, image and servers")
    overlay = None
    if overlay_file is not None:
        overlay = _load_yaml(root, overlay_file, env)
        data = _deep_merge(data, {} if overlay is None else overlay)
    try:
        return _build(data, destination, lambda builder: _version(root, version, env, builder))
    except _Invalid as problem:
        blamed = problem.path and overlay_file and _holds(overlay, problem.path)
        source = overlay_file if blamed else config_file
        where = f"{_format_path(problem.path)}: " if problem.path else ""
        raise ConfigError(f"{source}: {where}{problem}") from None


def _load_yaml(root: Path, name: str, environ: Mapping[str, str]) -> object:
    path = root / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Configuration file not found in {path}") from None
    except OSError as error:
        raise ConfigError(f"Cannot read configuration file {path}: {error.strerror}") from None
    try:
        rendered = erb.render(text, name, environ, root)
    except erb.TemplateError as error:
        raise ConfigError(str(error)) from None
    try:
        return yaml.safe_load(rendered)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{name}: invalid YAML{at}: {getattr(error, 'problem', None) or error}") from None


def _deep_merge(base: object, overlay: object) -> object:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return overlay


def _holds(data: object, path: _Where) -> bool:
    """Whether `path` exists in `data`: a merged value at that path came from this file."""
    for part in path:
        if isinstance(data, list):
            data = dict(enumerate(data))
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _version(root: Path, flag: str | None, environ: Mapping[str, str], builder: BuilderSettings) -> str:
    version = flag or environ.get("VERSION") or _git_version(root, dirty_suffix=builder.context is not None)
    if not _DOCKER_TAG.fullmatch(version):
        raise ConfigError(
            f'Version "{version}" cannot be an image tag: use at most 128 letters, digits, "_", "." and "-"'
        )
    return version


def _git_version(root: Path, *, dirty_suffix: bool) -> str:
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        raise ConfigError(
            f"Can't use commit hash as version, no git repository found in {root}; "
            "pass --version or set VERSION"
        )
    if dirty_suffix and _git(root, "status", "--porcelain"):
        return f"{head}_uncommitted_{os.urandom(8).hex()}"
    return head


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _plain(value: object) -> object:
    """Dataclasses, tuples and mappings as dicts and lists, so `yaml.safe_dump` can print them."""
    if isinstance(value, Credential):
        return [value.value] if value.secret else value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: _plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


# Validation. Readers take the raw value and its path and return the typed value or raise _Invalid.


class _Invalid(Exception):
    """A problem at a path of the merged YAML; `load_config` adds the file the value came from."""

    def __init__(self, path: _Where, message: str) -> None:
        super().__init__(message)
        self.path = path


def _format_path(path: _Where) -> str:
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


def _wrong(value: object, path: _Where, expected: str) -> _Invalid:
    return _Invalid(path, f"expected {expected}, got {_describe(value)}")


def _str(value: object, path: _Where) -> str:
    if not isinstance(value, str):
        raise _wrong(value, path, "a string")
    return value


def _bool(value: object, path: _Where) -> bool:
    if not isinstance(value, bool):
        raise _wrong(value, path, "true or false")
    return value


def _int(value: object, path: _Where) -> int:
    """A whole number of at least 1 (seconds, bytes, counts)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(value, path, "an integer")
    if value < 1:
        raise _Invalid(path, f"must be at least 1, got {value}")
    return value


def _port(value: object, path: _Where) -> int:
    port = _int(value, path)
    if port > 65535:
        raise _Invalid(path, f"must be a port number (1-65535), got {port}")
    return port


def _name(value: object, path: _Where) -> str:
    """Service, role and destination names end up in container names and file names."""
    name = _str(value, path)
    if not _NAME.fullmatch(name):
        raise _Invalid(path, f'may contain only letters, digits, "-" and "_", got {_describe(name)}')
    return name


def _scalar(value: object, path: _Where) -> str:
    """A string, number or boolean as the string Docker will see (`true`, not `True`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise _wrong(value, path, "a string, number or boolean")


def _dict(value: object, path: _Where) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _wrong(value, path, "a mapping")
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, f"keys must be strings, got {_describe(key)}")
    return value


def _mapping(value: object, path: _Where, allowed: tuple[str, ...]) -> dict[str, object]:
    data = _dict(value, path)
    for key in data:
        if key not in allowed:
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {guess[0]}?" if guess else f"expected one of: {', '.join(allowed)}"
            raise _Invalid((*path, key), f"unknown key ({hint})")
    return data


def _section(value: object, path: _Where, readers: Mapping[str, _Reader]) -> dict[str, object]:
    """The keys present in a mapping, each through its reader, so dataclass defaults stay the defaults."""
    return _read(_mapping(value, path, tuple(readers)), path, readers)


def _read(data: Mapping[str, object], path: _Where, readers: Mapping[str, _Reader]) -> dict[str, object]:
    return {key: reader(data[key], (*path, key)) for key, reader in readers.items() if key in data}


def _strings(value: object, path: _Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _wrong(value, path, "a list")
    return tuple(_str(item, (*path, index)) for index, item in enumerate(value))


def _comma_list(value: object, path: _Where) -> tuple[str, ...]:
    return tuple(part.strip() for part in _str(value, path).split(",") if part.strip())


def _string_or_list(value: object, path: _Where) -> tuple[str, ...]:
    return (_str(value, path),) if not isinstance(value, list) else _strings(value, path)


def _scalars(value: object, path: _Where) -> dict[str, str]:
    return {key: _scalar(item, (*path, key)) for key, item in _dict(value, path).items()}


def _string_map(value: object, path: _Where) -> dict[str, str]:
    return {key: _str(item, (*path, key)) for key, item in _dict(value, path).items()}


def _labels(value: object, path: _Where) -> dict[str, str]:
    labels = _scalars(value, path)
    for key in labels:
        if key in _RESERVED_LABELS:
            raise _Invalid(
                (*path, key), f"reserved label: pydeploy sets {', '.join(_RESERVED_LABELS)} itself"
            )
    return labels


def _hosts(value: object, path: _Where) -> tuple[str, ...]:
    hosts = _strings(value, path)
    for index, host in enumerate(hosts):
        if not host.strip():
            raise _Invalid((*path, index), "expected a host name or address, got an empty string")
        if host in hosts[:index]:
            raise _Invalid((*path, index), f"{host} is listed twice")
    if not hosts:
        raise _Invalid(path, "a role needs at least one host")
    return hosts


def _volumes(value: object, path: _Where) -> tuple[str, ...]:
    volumes = _strings(value, path)
    for index, volume in enumerate(volumes):
        host, _, container = volume.partition(":")
        if not host or not container:
            raise _wrong(volume, (*path, index), '"host:container"')
    return volumes


def _secret_entries(value: object, path: _Where) -> tuple[str, ...]:
    entries = _strings(value, path)
    for index, entry in enumerate(entries):
        if not _SECRET_ENTRY.fullmatch(entry):
            raise _wrong(entry, (*path, index), "NAME or NAME:SECRET_NAME")
    return entries


def _env(value: object, path: _Where) -> EnvSettings:
    """A plain mapping is all clear values; `clear`/`secret` (as in Kamal) make it structured."""
    data = _dict(value, path)
    if not {"clear", "secret", "tags"} & data.keys():
        return EnvSettings(clear=_scalars(data, path))
    return EnvSettings(**_section(data, path, {"clear": _scalars, "secret": _secret_entries}))


def _option(value: object, path: _Where) -> str | bool | tuple[str, ...]:
    """`true` is a bare `--flag`, a list repeats the flag, anything else is its value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return tuple(_scalar(item, (*path, index)) for index, item in enumerate(value))
    return _scalar(value, path)


def _options(value: object, path: _Where) -> dict[str, str | bool | tuple[str, ...]]:
    return {key: _option(item, (*path, key)) for key, item in _dict(value, path).items()}


def _credential(value: object, path: _Where) -> Credential:
    if isinstance(value, str):
        return Credential(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return Credential(value[0], secret=True)
    raise _wrong(
        value, path, "a string, or a one-element list naming a secret like [KAMAL_REGISTRY_PASSWORD]"
    )


def _jump_host(value: object, path: _Where) -> JumpHost:
    match = _JUMP_HOST.fullmatch(_str(value, path))
    if not match:
        raise _wrong(value, path, 'a jump host like "user@host:port" or "host"')
    return JumpHost(
        user=match["user"] or "root", host=match["host"], port=_port(int(match["port"] or 22), path)
    )


def _image(value: object, path: _Where) -> str:
    image = _str(value, path)
    if not image or ":" in image or "@" in image:
        raise _wrong(image, path, 'a repository without a tag or registry host, like "acme/app"')
    return image


_HEALTHCHECK: dict[str, _Reader] = {"path": _str, "interval": _int, "timeout": _int}
_BUFFERING: dict[str, _Reader] = {
    "requests": _bool,
    "responses": _bool,
    "memory": _int,
    "max_request_body": _int,
    "max_response_body": _int,
}
_PROXY: dict[str, _Reader] = {
    "host": _comma_list,
    "hosts": _strings,
    "ssl": _bool,
    "app_port": _port,
    "healthcheck": lambda value, path: Healthcheck(**_section(value, path, _HEALTHCHECK)),
    "response_timeout": _int,
    "buffering": lambda value, path: Buffering(**_section(value, path, _BUFFERING)),
    "forward_headers": _bool,
    "path_prefix": _comma_list,
    "path_prefixes": _strings,
    "image": _str,
}
_ROLE: dict[str, _Reader] = {"cmd": _str, "options": _options, "labels": _labels, "env": _env}
_ROLE_KEYS = ("hosts", *_ROLE, "proxy")
_ROOT: dict[str, _Reader] = {
    "service": _name,
    "image": _image,
    "registry": lambda value, path: RegistrySettings(
        **_section(value, path, {"server": _str, "username": _credential, "password": _credential})
    ),
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
    "deploy_timeout": _int,
    "drain_timeout": _int,
    "retain_containers": _int,
    "minimum_version": _str,
}
_ROOT_KEYS = (*_ROOT, "servers", "primary_role", "proxy")


def _proxy(value: object, path: _Where) -> ProxySettings:
    fields = _section(value, path, _PROXY)
    for single, plural in (("host", "hosts"), ("path_prefix", "path_prefixes")):
        if single in fields:
            if plural in fields:
                raise _Invalid(path, f'set "{single}" or "{plural}", not both')
            fields[plural] = fields.pop(single)
    proxy = ProxySettings(**fields)
    if proxy.ssl and not proxy.hosts:
        raise _Invalid((*path, "ssl"), "automatic SSL needs a host: set host or hosts")
    return proxy


def _role(
    name: str, value: object, path: _Where, primary: bool, root_raw: object, root: ProxySettings
) -> Role:
    """A role from a host list or a mapping; the primary role is proxied unless `proxy: false`, others
    only with `proxy: true` or a proxy mapping (merged over the root `proxy`)."""
    if isinstance(value, list):
        data: dict[str, object] = {}
        hosts = _hosts(value, path)
    else:
        data = _mapping(value, path, _ROLE_KEYS)
        if "hosts" not in data:
            raise _Invalid(path, 'missing required key "hosts"')
        hosts = _hosts(data["hosts"], (*path, "hosts"))
    proxy_value = data.get("proxy", primary)
    proxy_path = (*path, "proxy")
    if isinstance(proxy_value, bool):
        proxy = root if proxy_value else None
    elif isinstance(proxy_value, dict):
        proxy = _proxy(_deep_merge(root_raw, proxy_value), proxy_path)
    else:
        raise _wrong(proxy_value, proxy_path, "true, false or a proxy mapping")
    if proxy is not None and proxy.ssl and len(hosts) > 1:
        raise _Invalid(path, "automatic SSL works on a single server only, but this role has several hosts")
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
    if primary not in names:
        raise _Invalid(
            ("servers",), f'the primary role "{primary}" is not defined (roles: {", ".join(names) or "none"})'
        )
    return tuple(sorted(roles, key=lambda role: role.name != primary))


def _build(
    data: object, destination: str | None, resolve_version: Callable[[BuilderSettings], str]
) -> DeployConfig:
    raw = _dict(data, ())
    top = _mapping({key: value for key, value in raw.items() if not key.startswith("x-")}, (), _ROOT_KEYS)
    for key in ("service", "image", "servers"):
        if key not in top:
            raise _Invalid((), f'missing required key "{key}"')
    fields = _read(top, (), _ROOT)
    if "labels" in fields:
        fields["custom_labels"] = fields.pop("labels")
    root_raw = top.get("proxy", {})
    proxy = _proxy(root_raw, ("proxy",))
    primary = _name(top.get("primary_role", "web"), ("primary_role",))
    builder = fields.get("builder", BuilderSettings())
    return DeployConfig(
        **fields,
        proxy=proxy,
        roles=_roles(top["servers"], primary, root_raw, proxy),
        primary_role=primary,
        destination=destination,
        version=resolve_version(builder),
    )
