"""The docker and pyproxy command lines pydeploy runs on the hosts (pure functions, quoted for sh).

Names follow Kamal (spec 6.2): app containers `<service>-<role>[-<dest>]-<version>`, labelled service,
role, destination and version; the proxy container is `pyproxy` on the network `pydeploy`, its state in
the volume `pyproxy-state`. The proxy image is the one Kamal boots too (the top-level Dockerfile): the
program is called by its kamal-proxy name inside it, which finds the image's admin socket and keeps its
state in `~/.config/kamal-proxy`, where the volume is mounted.
"""

from __future__ import annotations

import secrets
from shlex import quote

from deployer.config import DeployConfig, ProxySettings, Role
from deployer.secrets import escaped

PROXY_CONTAINER = "pyproxy"
NETWORK = "pydeploy"
PROXY_VOLUME = "pyproxy-state"
PROXY_PROGRAM = "kamal-proxy"  # `pyproxy` under the name it answers Kamal by (same commands and flags)
PROXY_STATE_DIR = "/home/kamal-proxy/.config/kamal-proxy"  # in the image: state file and ACME certificates
DEFAULT_PROXY_IMAGE = "pyproxy:latest"


def env_file_path(config: DeployConfig, role: Role) -> str:
    return f".kamal/apps/{config.service_with_destination}/env/roles/{role.name}.env"


def env_file(config: DeployConfig, role: Role, secret_values: dict[str, str]) -> bytes:
    """The role's secret env vars, one `KEY=value` line each, escaped as a double-quoted literal's inside."""
    lines = []
    for name, source in config.env_for(role).secret_sources().items():
        lines.append(f"{name}={escaped(secret_values[source])}")
    return ("\n".join(lines) + "\n").encode()


def _labels(config: DeployConfig, role: Role, version: str) -> list[str]:
    return [f"--label {quote(f'{name}={value}')}" for name, value in config.labels(role, version).items()]


def _filters(config: DeployConfig, role: Role) -> str:
    return " ".join(
        f"--filter {quote(f'label={name}={value}')}"
        for name, value in (
            ("service", config.service),
            ("role", role.name),
            ("destination", config.destination or ""),
        )
    )


def image(config: DeployConfig, version: str) -> str:
    return f"{config.repository}:{version}"


def run_app(config: DeployConfig, role: Role, version: str, host: str) -> str:
    """`docker run` for a new app container (spec 8.2): secrets only through the env file."""
    name = config.container_name(role, version)
    restart = "" if "restart" in role.options else " --restart unless-stopped"  # an option replaces it
    parts = [
        f"docker run --detach{restart}",
        f"--name {quote(name)} --network {NETWORK}",
        f"--hostname {quote(_hostname(host))}",
        f"--env KAMAL_CONTAINER_NAME={quote(name)} --env KAMAL_VERSION={quote(version)}",
        f"--env KAMAL_HOST={quote(host)}",
    ]
    if config.destination:
        parts.append(f"--env KAMAL_DESTINATION={quote(config.destination)}")
    parts += [f"--env {quote(f'{key}={value}')}" for key, value in config.env_for(role).clear.items()]
    parts.append(f"--env-file {env_file_path(config, role)}")
    parts.append('--log-opt max-size="10m"')
    parts += [f"--volume {quote(volume)}" for volume in config.volumes]
    parts += _labels(config, role, version)
    parts += _options(role)
    parts.append(quote(image(config, version)))
    if role.cmd:
        parts.append(role.cmd)
    return " ".join(parts)


def _options(role: Role) -> list[str]:
    options = []
    for key, value in role.options.items():
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            options.append(quote(f"--{key}") if item is True else quote(f"--{key}={item}"))
    return options


def _hostname(host: str) -> str:
    return f"{host.rstrip('.')[:51]}-{secrets.token_hex(6)}"


def container_id(config: DeployConfig, role: Role, version: str) -> str:
    name = config.container_name(role, version)
    return f"docker container ls --all --filter {quote(f'name=^{name}$')} --quiet"


def replaced_name(config: DeployConfig, role: Role, version: str) -> str:
    """Where an existing container of the version is moved aside (a redeploy of a version, a rollback)."""
    return f"{config.container_name(role, version)}_replaced_{secrets.token_hex(8)}"


def rename_existing(config: DeployConfig, role: Role, version: str, replaced: str) -> str:
    name = config.container_name(role, version)
    exists = container_id(config, role, version)
    return f'if [ -n "$({exists})" ]; then docker rename {quote(name)} {quote(replaced)}; fi'


def current_version(config: DeployConfig, role: Role) -> str:
    """The version of the role's newest running container (its `version` label), or nothing."""
    return (
        f"docker ps --latest --filter status=running --filter status=restarting {_filters(config, role)}"
        " --format '{{.Label \"version\"}}'"
    )


def containers(config: DeployConfig, role: Role) -> str:
    return (
        f"docker ps --all {_filters(config, role)}"
        " --format '{{.Names}}\\t{{.Label \"version\"}}\\t{{.Status}}\\t{{.Image}}'"
    )


def stop(config: DeployConfig, role: Role, version: str, timeout: int | None = None) -> str:
    return stop_named(config.container_name(role, version), timeout)


def stop_named(name: str, timeout: int | None = None) -> str:
    wait = f" -t {timeout}" if timeout is not None else ""
    listed = f"docker container ls --all --filter {quote(f'name=^{name}$')} --quiet"
    return f"{listed} | xargs --no-run-if-empty docker stop{wait}"


def history_path(config: DeployConfig) -> str:
    """The versions this host switched to, one a line: what `rollback` goes back along."""
    return f".kamal/{config.service_with_destination}-versions"


def record_version(config: DeployConfig, version: str) -> str:
    return f"mkdir -p .kamal && echo {quote(version)} >> {history_path(config)}"


def read_history(config: DeployConfig) -> str:
    return f"cat {history_path(config)} 2>/dev/null || true"


def start(config: DeployConfig, role: Role, version: str) -> str:
    return f"docker start {quote(config.container_name(role, version))}"


def logs(config: DeployConfig, role: Role, version: str, lines: int = 100) -> str:
    return f"docker logs --timestamps --tail {lines} {quote(config.container_name(role, version))} 2>&1"


def prune(config: DeployConfig, role: Role, keep: int) -> str:
    """Remove stopped containers of the role beyond the newest `keep` (kept for rollbacks)."""
    return (
        "docker ps --all --filter status=created --filter status=exited --filter status=dead"
        f" {_filters(config, role)}"
        f" --format '{{{{.Names}}}}' | tail -n +{keep + 1} | xargs --no-run-if-empty docker rm"
    )


def prune_images(config: DeployConfig) -> str:
    """Images of the service no container uses any more (docker keeps those that are in use)."""
    return f"docker image prune --all --force --filter {quote(f'label=service={config.service}')}"


def tag_latest(config: DeployConfig, version: str) -> str:
    return f"docker tag {quote(image(config, version))} {quote(image(config, 'latest'))}"


def pull(config: DeployConfig, version: str) -> str:
    return f"docker pull {quote(image(config, version))}"


def image_exists(config: DeployConfig, version: str) -> str:
    return f"docker image inspect {quote(image(config, version))} --format '{{{{.Id}}}}'"


def login(server: str | None, username: str) -> str:
    """`docker login`, the password read from stdin (never on a command line)."""
    target = f" {quote(server)}" if server else ""
    return f"docker login{target} -u {quote(username)} --password-stdin"


def network() -> str:
    return f"docker network create {NETWORK} 2>/dev/null || docker network inspect {NETWORK} >/dev/null"


def run_proxy(proxy_image: str) -> str:
    """Start the proxy container if it exists, else create it (boot never replaces a running proxy)."""
    create = (
        f"docker run --name {PROXY_CONTAINER} --network {NETWORK} --detach --restart unless-stopped"
        f" --volume {PROXY_VOLUME}:{PROXY_STATE_DIR} --publish 80:80 --publish 443:443"
        f' --log-opt max-size="10m" {quote(proxy_image)}'
    )
    return f"docker container start {PROXY_CONTAINER} 2>/dev/null || {create}"


def remove_proxy() -> str:
    return f"docker container rm --force {PROXY_CONTAINER} 2>/dev/null || true"


def proxy_deploy(config: DeployConfig, role: Role, target: str) -> str:
    """`kamal-proxy deploy` in the proxy container: health-check the new container, switch, drain the old."""
    proxy = role.proxy or ProxySettings()
    flags = [
        f"--target={quote(f'{target}:{proxy.app_port}')}",
        f"--deploy-timeout={config.deploy_timeout}s",
        f"--drain-timeout={config.drain_timeout}s",
        f"--health-check-path={quote(proxy.healthcheck.path)}",
        f"--health-check-interval={proxy.healthcheck.interval}s",
        f"--health-check-timeout={proxy.healthcheck.timeout}s",
        f"--target-timeout={proxy.response_timeout}s",
    ]
    flags += [f"--host={quote(host)}" for host in proxy.hosts]
    flags += [f"--path-prefix={quote(prefix)}" for prefix in proxy.path_prefixes]
    if proxy.ssl:
        flags.append("--tls")
    if proxy.forward_headers is not None:
        flags.append(f"--forward-headers={str(proxy.forward_headers).lower()}")
    service = quote(config.container_prefix(role))
    return f"docker exec {PROXY_CONTAINER} {PROXY_PROGRAM} deploy {service} {' '.join(flags)}"


def proxy_logs(lines: int = 100) -> str:
    return f"docker logs --tail {lines} {PROXY_CONTAINER} 2>&1"


def proxy_details() -> str:
    listed = f"docker exec {PROXY_CONTAINER} {PROXY_PROGRAM} list"
    return f"docker ps --filter name=^{PROXY_CONTAINER}$ && {listed}"
