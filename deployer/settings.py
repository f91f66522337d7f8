"""The typed, frozen values `config/deploy.yml` is validated into (loaded by `deployer.config`).

Everything after loading trusts these values; they say what Kamal's keys mean for pydeploy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

REDACTED = "[REDACTED]"
_HIDDEN_CREDENTIALS = ("password", "acme_eab_hmac_key")


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

    Beyond Kamal's keys, every pyproxy deploy option is reachable (canonical_host ... targets), and
    `rollout`, the split `pydeploy rollout deploy` gives the proxy.
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
    targets: tuple[str, ...] = ()
    rollout: RolloutSplit | None = None


CANARY_SUFFIX = "-rollout"  # the shadow role of a rollout's containers is `<role>-rollout` (rollout.py)


@dataclass(frozen=True)
class RolloutSplit:
    """`proxy.rollout` (ours): the requests a canary (`pydeploy rollout deploy`) gets, by their
    `kamal-rollout` cookie: `percentage` of the cookie values, and every value in `allowlist`."""

    percentage: int = 0
    allowlist: tuple[str, ...] = ()


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
    """A local file (relative to the project root) uploaded and mounted at `remote` in the container;
    `mode` for chmod (`None`: Kamal's 755)."""

    local: str
    remote: str
    mode: str | None = None
    options: str | None = None  # the mount's, like "ro" or "ro,Z"


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
        """Every setting as plain dicts and lists for printing. Literal passwords and keys are hidden here;
        values that came from secrets are hidden by `secrets.redact_data`."""
        return {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}


def _plain(value: object) -> object:
    """Dataclasses, tuples and mappings as dicts and lists, so `yaml.safe_dump` can print them; a literal
    password or key (not a secret's name) shows as `[REDACTED]`."""
    if isinstance(value, Credential):
        return [value.value] if value.secret else value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: REDACTED if _is_literal_secret(item.name, value) else _plain(getattr(value, item.name))
            for item in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _is_literal_secret(name: str, owner: object) -> bool:
    credential = getattr(owner, name)
    return name in _HIDDEN_CREDENTIALS and isinstance(credential, Credential) and not credential.secret
