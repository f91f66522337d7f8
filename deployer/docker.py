"""The docker and pyproxy command lines pydeploy runs on the hosts (pure functions, quoted for sh).

Names follow Kamal (spec 6.2): app containers `<service>-<role>[-<dest>]-<version>`, labelled service,
role, destination and version; the proxy container is `pyproxy` on the network `pydeploy`, its state in
the volume `pyproxy-state`. The proxy image is the one Kamal boots too (the top-level Dockerfile): the
program is called by its kamal-proxy name inside it, which finds the image's admin socket and keeps its
state in `~/.config/kamal-proxy`, where the volume is mounted.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from shlex import quote

from deployer.config import DeployConfig, EnvSettings, LoggingSettings, ProxyRun, ProxySettings, Role
from deployer.secrets import escaped

PROXY_CONTAINER = "pyproxy"
NETWORK = "pydeploy"
PROXY_VOLUME = "pyproxy-state"
PROXY_PROGRAM = "kamal-proxy"  # `pyproxy` under the name it answers Kamal by (same commands and flags)
PROXY_STATE_DIR = "/home/kamal-proxy/.config/kamal-proxy"  # in the image: state file and ACME certificates
DEFAULT_PROXY_IMAGE = "pyproxy:latest"
APPS_CONFIG_DIR = ".kamal/proxy/apps-config"  # on the host, under the SSH user's home
APPS_CONFIG_MOUNT = "/home/kamal-proxy/.apps-config"  # the same directory in the proxy container
DEFAULT_LOG_REQUEST_HEADERS = ("Cache-Control", "Last-Modified", "User-Agent")  # Kamal's, when unset


def env_file_path(config: DeployConfig, role: Role) -> str:
    return f".kamal/apps/{config.service_with_destination}/env/roles/{role.name}.env"


def env_file(config: DeployConfig, role: Role, secret_values: Mapping[str, str]) -> bytes:
    """The role's secret env vars (see secret_env_file)."""
    return secret_env_file(config.env_for(role), secret_values)


def secret_env_file(env: EnvSettings, secret_values: Mapping[str, str]) -> bytes:
    """An env file of the secret vars, one `KEY=value` line each, escaped as a double-quoted literal's
    inside (Kamal's format): an app role's or an accessory's."""
    lines = [f"{name}={escaped(secret_values[source])}" for name, source in env.secret_sources().items()]
    return ("\n".join(lines) + "\n").encode()


def _labels(config: DeployConfig, role: Role, version: str) -> list[str]:
    return [f"--label {quote(f'{name}={value}')}" for name, value in config.labels(role, version).items()]


def role_filters(config: DeployConfig, role: Role) -> str:
    """`docker ps` filters for the role's containers, every version (empty destination without one)."""
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
    parts += logging_options(role.logging or config.logging)
    parts += [f"--volume {quote(volume)}" for volume in config.volumes]
    parts += _asset_volume(config, role, version)
    parts += _labels(config, role, version)
    parts += options(role.options)
    parts.append(quote(image(config, version)))
    if role.cmd:
        parts.append(role.cmd)
    return " ".join(parts)


def asset_path(config: DeployConfig, role: Role) -> str | None:
    """Where the role's image keeps its assets (spec 10): the role's `asset_path`, else the root's;
    proxied roles only (a role without the proxy renders no pages)."""
    if role.proxy is None:
        return None
    return role.asset_path or config.asset_path


def assets_dir(config: DeployConfig, kind: str) -> str:
    """The app's `extracted` or `volumes` asset directories, one `<role>-<version>` in it per version."""
    return f".kamal/apps/{config.service_with_destination}/assets/{kind}"


def asset_volume_dir(config: DeployConfig, role: Role, version: str) -> str:
    """The merged assets of the version and the one before it (see assets.py), mounted on asset_path."""
    return f"{assets_dir(config, 'volumes')}/{role.name}-{version}"


def _asset_volume(config: DeployConfig, role: Role, version: str) -> list[str]:
    """`--volume` with `$PWD` left to sh (Docker wants an absolute path); none without `asset_path`."""
    path = asset_path(config, role)
    if path is None:
        return []
    return [f'--volume "$PWD"/{quote(f"{asset_volume_dir(config, role, version)}:{path}")}']


def logging_options(settings: LoggingSettings) -> list[str]:
    """Kamal's `logging:` as docker run flags; nothing set keeps Docker's driver with a 10 MB log cap."""
    if settings.driver is None and not settings.options:
        return ['--log-opt max-size="10m"']
    driver = [f"--log-driver {quote(settings.driver)}"] if settings.driver else []
    return driver + [f"--log-opt {quote(f'{key}={value}')}" for key, value in settings.options.items()]


def options(settings: Mapping[str, str | bool | tuple[str, ...]]) -> list[str]:
    options = []
    for key, value in settings.items():
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            options.append(quote(f"--{key}") if item is True else quote(f"--{key}={item}"))
    return options


def _hostname(host: str) -> str:
    return f"{host.rstrip('.')[:51]}-{secrets.token_hex(6)}"


def container_id(config: DeployConfig, role: Role, version: str) -> str:
    return find_named(config.container_name(role, version))


def replaced_name(config: DeployConfig, role: Role, version: str) -> str:
    """Where an existing container of the version is moved aside (a redeploy of a version, a rollback)."""
    return f"{config.container_name(role, version)}_replaced_{secrets.token_hex(8)}"


def rename_existing(config: DeployConfig, role: Role, version: str, replaced: str) -> str:
    name = config.container_name(role, version)
    exists = container_id(config, role, version)
    return f'if [ -n "$({exists})" ]; then docker rename {quote(name)} {quote(replaced)}; fi'


def restore_name(config: DeployConfig, role: Role, version: str, replaced: str) -> str:
    """The container moved aside by rename_existing named for its version again, in place of the new
    container of that version (which is removed)."""
    name = quote(config.container_name(role, version))
    return f"docker rm --force {name} >/dev/null 2>&1; docker rename {quote(replaced)} {name}"


def current_version(config: DeployConfig, role: Role) -> str:
    """The version of the role's newest running container (its `version` label), or nothing."""
    return (
        f"docker ps --latest --filter status=running --filter status=restarting {role_filters(config, role)}"
        " --format '{{.Label \"version\"}}'"
    )


def containers(config: DeployConfig, role: Role) -> str:
    return (
        f"docker ps --all {role_filters(config, role)}"
        " --format '{{.Names}}\\t{{.Label \"version\"}}\\t{{.Status}}\\t{{.Image}}'"
    )


def stop_seconds(config: DeployConfig, role: Role) -> int | None:
    """How long `docker stop` lets the role's container finish after SIGTERM before SIGKILL (spec 8.2):
    its `stop_timeout`, else `drain_timeout` for a role without the proxy (a job in progress gets the
    time a request would), else Docker's default (the proxy already drained the requests)."""
    seconds = config.stop_timeout_for(role)
    if seconds is None and role.proxy is None:
        seconds = config.drain_timeout
    return None if seconds is None else math.ceil(seconds)


def stop(config: DeployConfig, role: Role, version: str) -> str:
    return stop_named(config.container_name(role, version), stop_seconds(config, role))


def stop_named(name: str, timeout: int | None = None) -> str:
    return f"{find_named(name)} | xargs --no-run-if-empty {_docker_stop(timeout)}"


def stop_container(container: str, timeout: int | None = None) -> str:
    return f"{_docker_stop(timeout)} {quote(container)}"


def _docker_stop(timeout: int | None) -> str:
    return "docker stop" + (f" -t {timeout}" if timeout is not None else "")


def remove_containers(config: DeployConfig, role: Role) -> str:
    """Every container of the role, stopped first (the app gets its SIGTERM and its `stop_timeout`),
    then removed."""
    filters = role_filters(config, role)
    listed = f"docker ps --all --quiet {filters}"
    stop = _docker_stop(stop_seconds(config, role))
    return f"{listed} | xargs --no-run-if-empty {stop} >/dev/null && docker container prune --force {filters}"


def find_named(name: str) -> str:
    """The id of the container called exactly `name` (nothing when there is none)."""
    return f"docker container ls --all --filter {quote(f'name=^{name}$')} --quiet"


def container_status(container: str) -> str:
    """`healthy`/`unhealthy`/`starting` for a container with a Docker health check, else its state
    (`running`, `restarting`, `exited`...): what the readiness of a role without the proxy is (spec 8.4)."""
    status = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    return f"docker inspect --format {quote(status)} {quote(container)}"


def watch_status(container: str, seconds: float) -> str:
    """Exit 1 (printing the status) as soon as the container is neither running nor healthy within the
    next `seconds`; exit 0 when it stayed so."""
    return (
        f"end=$(( $(date +%s) + {math.ceil(seconds)} )); while :; do"
        f" s=$({container_status(container)} 2>&1);"
        ' case "$s" in running|healthy) ;; *) echo "$s"; exit 1;; esac;'
        ' [ "$(date +%s)" -ge "$end" ] && exit 0; sleep 1; done'
    )


# GET the health check from inside the proxy container (it is on the app's network): argv is url, Host
# header, timeout, interval, seconds, mode. Mode "wait" ends at the first 2xx, "watch" at the first
# answer that is not; both end at the deadline. The exit status says healthy (0) or not; the last line
# what the last check got.
_PROBE = """import sys, time, urllib.request
url, host, timeout, interval, seconds, mode = sys.argv[1:]
request = urllib.request.Request(url, headers={"Host": host} if host else {})
deadline = time.monotonic() + float(seconds)
while True:
    try:
        code = urllib.request.urlopen(request, timeout=float(timeout)).status
        problem = None if 200 <= code < 300 else f"answered {code}"
    except Exception as exc:
        problem = f"answered {exc.code}" if hasattr(exc, "code") else str(exc) or type(exc).__name__
    if (problem is None) != (mode == "watch") or time.monotonic() >= deadline:
        print(problem or "healthy")
        sys.exit(1 if problem else 0)
    time.sleep(float(interval))
"""


def health_probe(role: Role, container: str, seconds: float, interval: float, watch: bool = False) -> str:
    """Check the proxied role's health check on `container` every `interval` for up to `seconds`: until it
    is healthy (exit 0; 1 at the deadline), or with `watch` while it stays healthy (exit 1 at the first
    failure; 0 at the deadline)."""
    proxy = role.proxy or ProxySettings()
    check = proxy.healthcheck
    url = f"http://{container}:{check.port or proxy.app_port}/{check.path.lstrip('/')}"
    args = [
        url,
        check.host or "",
        str(check.timeout),
        str(interval),
        str(seconds),
        "watch" if watch else "wait",
    ]
    return f"docker exec {PROXY_CONTAINER} python3 -c {quote(_PROBE)} {' '.join(map(quote, args))}"


def history_path(config: DeployConfig) -> str:
    """The versions this host switched to, one a line: what `rollback` goes back along."""
    return f".kamal/{config.service_with_destination}-versions"


def record_version(config: DeployConfig, version: str) -> str:
    return f"mkdir -p .kamal && echo {quote(version)} >> {history_path(config)}"


def read_history(config: DeployConfig) -> str:
    return f"cat {history_path(config)} 2>/dev/null || true"


def start(config: DeployConfig, role: Role, version: str) -> str:
    return start_named(config.container_name(role, version))


def start_named(name: str) -> str:
    return f"docker start {quote(name)}"


SHOWN_LINES = 100  # `logs` shows this many lines unless --since or --grep narrows them (Kamal's)
FOLLOWED_LINES = 10  # `logs -f` starts with this many


def container_logs(
    container: str,
    lines: int | None = None,
    since: str | None = None,
    grep: str | None = None,
    grep_options: str | None = None,
    timestamps: bool = True,
    follow: bool = False,
) -> str:
    """`docker logs` of a container (an app's or an accessory's), as Kamal's: without `lines`, the last 100,
    or all when --since or --grep narrows them; following starts with the last 10 and greps line by line."""
    if lines is None and (follow or (since is None and grep is None)):
        lines = FOLLOWED_LINES if follow else SHOWN_LINES
    flags = [
        *(["--timestamps"] if timestamps else []),
        *([f"--since {quote(since)}"] if since else []),
        *([f"--tail {lines}"] if lines is not None else []),
        *(["--follow"] if follow else []),
    ]
    command = f"docker logs {' '.join([*flags, quote(container)])} 2>&1"
    if grep is None:
        return command
    options = ["--line-buffered"] if follow else []
    options += [quote(option) for option in (grep_options or "").split()]
    grepped = f"{command} | grep {' '.join([*options, '-e', quote(grep)])}"
    return grepped if follow else f"{grepped} || [ $? -eq 1 ]"  # grep's 1: no line matched, not a failure


def logs(config: DeployConfig, role: Role, version: str, lines: int = 100) -> str:
    return container_logs(config.container_name(role, version), lines)


def prune(config: DeployConfig, role: Role, keep: int) -> str:
    """Remove stopped containers of the role beyond the newest `keep` (kept for rollbacks)."""
    return (
        "docker ps --all --filter status=created --filter status=exited --filter status=dead"
        f" {role_filters(config, role)}"
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


def network(name: str = NETWORK) -> str:
    """The network created where missing (the deploy network, or an accessory's own)."""
    named = quote(name)
    return f"docker network create {named} 2>/dev/null || docker network inspect {named} >/dev/null"


def proxy_image(config: DeployConfig) -> str:
    """The image a new proxy container runs: `proxy.run`'s, else `proxy.image` (ours), else pyproxy's."""
    run = config.proxy.run or ProxyRun()
    return run.image_ref(config.proxy.image or DEFAULT_PROXY_IMAGE)


def run_proxy(config: DeployConfig) -> str:
    """Start the proxy container if it exists, else create it from `proxy.run` (spec 8.1); boot never
    replaces a running proxy. The apps-config directory is always mounted: error pages and custom
    certificates reach the proxy through it."""
    run = config.proxy.run or ProxyRun()
    parts = [
        f"docker run --name {PROXY_CONTAINER} --network {NETWORK} --detach --restart unless-stopped",
        f"--volume {PROXY_VOLUME}:{PROXY_STATE_DIR}",
        f"--volume $PWD/{APPS_CONFIG_DIR}:{APPS_CONFIG_MOUNT}",
    ]
    if run.publish:
        for ip in run.bind_ips or (None,):
            bind = "" if ip is None else f"[{ip}]:" if ":" in ip and not ip.startswith("[") else f"{ip}:"
            parts.append(f"--publish {quote(f'{bind}{run.http_port}:80')}")
            parts.append(f"--publish {quote(f'{bind}{run.https_port}:443')}")
    parts.append(f"--log-opt max-size={quote(run.log_max_size)}")
    if run.metrics_port is not None:
        parts.append(f"--expose={run.metrics_port}")
    parts += options(run.options)
    parts.append(quote(proxy_image(config)))
    parts.append(f"{PROXY_PROGRAM} run")
    if run.debug:
        parts.append("--debug")
    if run.metrics_port is not None:
        parts.append(f"--metrics-port={run.metrics_port}")
    create = " ".join(parts)
    return f"mkdir -p {APPS_CONFIG_DIR} && (docker container start {PROXY_CONTAINER} 2>/dev/null || {create})"


def proxy_running() -> str:
    """Exit 0 when the proxy container runs."""
    running = f"docker container inspect --format '{{{{.State.Running}}}}' {PROXY_CONTAINER}"
    return f"{running} 2>/dev/null | grep -qx true"


def wait_for_proxy(seconds: int = 30) -> str:
    """Until the proxy just started answers on its admin socket (it opens it last, after its listeners);
    its error after `seconds`."""
    ask = f"docker exec {PROXY_CONTAINER} {PROXY_PROGRAM} list"
    retries = f"for i in $(seq {seconds * 4}); do {ask} >/dev/null 2>&1 && exit 0; sleep 0.25; done"
    return f"{retries}; {ask} >/dev/null"


def remove_proxy() -> str:
    return f"docker container rm --force {PROXY_CONTAINER} 2>/dev/null || true"


def proxy_deploy(config: DeployConfig, role: Role, target: str, version: str | None = None) -> str:
    """`kamal-proxy deploy` of the role's container `target` (beside the role's extra `targets`, which the
    proxy balances across). The error pages are those of `version`, by default the version the target
    container is labelled with, so a switch back to an old container gets the old version's pages."""
    proxy = role.proxy or ProxySettings()
    label = quote('{{index .Config.Labels "version"}}')
    word = quote(version) if version is not None else f'"$(docker inspect --format {label} {quote(target)})"'
    return proxy_deploy_command(
        config.container_prefix(role),
        [f"{target}:{proxy.app_port}", *proxy.targets],
        proxy,
        config,
        word,
        role_name=role.name,
    )


def proxy_deploy_command(
    service: str,
    targets: Sequence[str],
    proxy: ProxySettings,
    config: DeployConfig,
    version: str | None,
    *,
    role_name: str | None = None,
) -> str:
    """`kamal-proxy deploy <service>` in the proxy container with every flag Kamal emits (spec 3.4) and
    every other pyproxy deploy option set in `proxy:`; it blocks until health check, switch and drain.

    `targets` are "host:port" strings. `version` is a shell word (quoted) naming the version whose uploaded
    error pages the service gets when `error_pages_path` is set (None: no error pages, e.g. an accessory).
    `role_name` names the directory of a custom certificate (`certificate_dir`).
    The ACME EAB credentials are read from files `proxy_files.upload_acme_credentials` put on the host
    (0600), so they are in no command pydeploy sends or logs. pyproxy's deploy takes them only as flags,
    so they are in the arguments of that short-lived `docker exec` (visible to root in `ps` while the
    deploy runs) and, as every deploy option, in the proxy's state file.
    """
    flags = [f"--target={quote(target)}" for target in targets]
    flags += [f"--host={quote(host)}" for host in proxy.hosts]
    flags += [f"--path-prefix={quote(prefix)}" for prefix in proxy.path_prefixes]
    flags += [
        *timeout_flags(config),
        f"--health-check-path={quote(proxy.healthcheck.path)}",
        f"--health-check-interval={go_duration(proxy.healthcheck.interval)}",
        f"--health-check-timeout={go_duration(proxy.healthcheck.timeout)}",
        f"--target-timeout={go_duration(proxy.response_timeout)}",
    ]
    flags += _health_check_flags(proxy)
    flags += _tls_flags(proxy, config, service, role_name)
    flags += _buffering_flags(proxy)
    flags += _routing_flags(proxy)
    headers = DEFAULT_LOG_REQUEST_HEADERS if proxy.log_request_headers is None else proxy.log_request_headers
    flags += [f"--log-request-header={quote(name)}" for name in headers]
    flags += [f"--log-response-header={quote(name)}" for name in proxy.log_response_headers]
    flags += [f"--exclude-metrics-path={quote(path)}" for path in proxy.exclude_metrics_paths]
    if version is not None and config.error_pages_path:
        flags.append(f"--error-pages={quote(f'{APPS_CONFIG_MOUNT}/{error_pages_dir(config)}')}/{version}")
    return f"docker exec {PROXY_CONTAINER} {PROXY_PROGRAM} deploy {quote(service)} {' '.join(flags)}"


def timeout_flags(config: DeployConfig) -> list[str]:
    """How long a `kamal-proxy deploy` (or `rollout deploy`) waits for health, and for the old to drain."""
    return [
        f"--deploy-timeout={go_duration(config.deploy_timeout)}",
        f"--drain-timeout={go_duration(config.drain_timeout)}",
    ]


def acme_credential_file(config: DeployConfig, service: str, name: str) -> str:
    """Where a proxied service's ACME credential `name` (eab-kid, eab-hmac-key) waits on the host (0600)."""
    return f".kamal/apps/{config.service_with_destination}/acme/{service}-{name}"


def _health_check_flags(proxy: ProxySettings) -> list[str]:
    check = proxy.healthcheck
    flags = []
    if check.port is not None:
        flags.append(f"--health-check-port={check.port}")
    if check.host is not None:
        flags.append(f"--health-check-host={quote(check.host)}")
    return flags


def _tls_flags(proxy: ProxySettings, config: DeployConfig, service: str, role_name: str | None) -> list[str]:
    flags = ["--tls"] if proxy.ssl or proxy.certificate is not None else []
    if proxy.certificate is not None:
        directory = f"{APPS_CONFIG_MOUNT}/{certificate_dir(config, role_name)}"
        flags.append(f"--tls-certificate-path={quote(f'{directory}/cert.pem')}")
        flags.append(f"--tls-private-key-path={quote(f'{directory}/key.pem')}")
    if proxy.ssl_redirect is not None:
        flags.append(f"--tls-redirect={_bool(proxy.ssl_redirect)}")
    if proxy.tls_staging:
        flags.append("--tls-staging")
    if proxy.acme_directory is not None:
        flags.append(f"--tls-acme-directory={quote(proxy.acme_directory)}")
    for name, credential in (("eab-kid", proxy.acme_eab_kid), ("eab-hmac-key", proxy.acme_eab_hmac_key)):
        if credential is not None:
            flags.append(f'--tls-acme-{name}="$(cat {quote(acme_credential_file(config, service, name))})"')
    if proxy.tls_on_demand_url is not None:
        flags.append(f"--tls-on-demand-url={quote(proxy.tls_on_demand_url)}")
    return flags


def _buffering_flags(proxy: ProxySettings) -> list[str]:
    """As Kamal: both buffering flags always (a bare flag when on, `=false` when off), limits when set."""
    buffering = proxy.buffering
    flags = [
        "--buffer-requests" if buffering.requests else "--buffer-requests=false",
        "--buffer-responses" if buffering.responses else "--buffer-responses=false",
    ]
    for flag, value in (
        ("--buffer-memory", buffering.memory),
        ("--max-request-body", buffering.max_request_body),
        ("--max-response-body", buffering.max_response_body),
    ):
        if value is not None:
            flags.append(f"{flag}={value}")
    return flags


def _routing_flags(proxy: ProxySettings) -> list[str]:
    flags = []
    for flag, value in (
        ("--strip-path-prefix", proxy.strip_path_prefix),
        ("--forward-headers", proxy.forward_headers),
        ("--read-target-websockets", proxy.read_target_websockets),
        ("--scope-cookie-paths", proxy.scope_cookie_paths),
    ):
        if value is not None:
            flags.append(f"{flag}={_bool(value)}")
    flags += [f"--read-target={quote(target)}" for target in proxy.read_targets]
    if proxy.writer_affinity_timeout is not None:
        flags.append(f"--writer-affinity-timeout={go_duration(proxy.writer_affinity_timeout)}")
    if proxy.canonical_host is not None:
        flags.append(f"--canonical-host={quote(proxy.canonical_host)}")
    if proxy.client_ip_header is not None:
        flags.append(f"--client-ip-header={quote(proxy.client_ip_header)}")
    return flags


def _bool(value: bool) -> str:
    return "true" if value else "false"


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration the proxy parses, to the millisecond: `2s`, `0.5s`."""
    return (
        f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    )


def error_pages_dir(config: DeployConfig) -> str:
    """The app's error pages, one directory per version, relative to the apps-config directory (spec 11)."""
    return f"{config.service_with_destination}/error_pages"


def certificate_dir(config: DeployConfig, role_name: str | None) -> str:
    """A custom certificate's directory, relative to the apps-config directory (Kamal's layout)."""
    parts = [config.service_with_destination, "tls", *([role_name] if role_name else [])]
    return "/".join(parts)


def proxy_logs(lines: int = 100) -> str:
    return f"docker logs --tail {lines} {PROXY_CONTAINER} 2>&1"


def proxy_details() -> str:
    listed = f"docker exec {PROXY_CONTAINER} {PROXY_PROGRAM} list"
    return f"docker ps --filter name=^{PROXY_CONTAINER}$ && {listed}"
