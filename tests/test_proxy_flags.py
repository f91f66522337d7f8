"""The `kamal-proxy deploy` and proxy `docker run` command lines pydeploy sends: every proxy option of
deploy.yml reaches the proxy as the value it was given.

Each deploy command is run through a real `sh` (so quoting and `$(...)` are what the host does) and its
arguments parsed by pyproxy's own deploy parser: a flag pyproxy does not know, or a value it reads
differently, fails here.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from deployer import docker, proxy_files
from deployer.config import (
    Buffering,
    Credential,
    DeployConfig,
    Healthcheck,
    ProxyRun,
    ProxySettings,
    Role,
    SslCertificate,
    load_config,
)
from proxy.cli import _deploy_parser

PREFIX = f"docker exec {docker.PROXY_CONTAINER} {docker.PROXY_PROGRAM} deploy "


def app(proxy: ProxySettings, **settings: object) -> tuple[DeployConfig, Role]:
    web = Role(name="web", hosts=("10.0.0.1",), proxy=proxy)
    config = DeployConfig(service="shop", image="shop", version="v7", roles=(web,), proxy=proxy, **settings)
    return config, web


def parsed(command: str, home: Path) -> tuple[str, dict[str, object]]:
    """The service and the options pyproxy's `deploy` takes from `command`, as the host's sh passes them
    (run in `home`, the SSH user's home, for the files it reads)."""
    assert command.startswith(PREFIX), command
    script = f'set -- {command.removeprefix(PREFIX)}; printf "%s\\0" "$@"'
    done = subprocess.run(["sh", "-c", script], cwd=home, capture_output=True, check=True)
    argv = done.stdout.decode().split("\0")[:-1]
    options = vars(_deploy_parser().parse_args(argv))
    return options.pop("service"), options


def test_kamal_defaults_are_sent_as_kamal_sends_them(tmp_path: Path) -> None:
    config, web = app(ProxySettings(hosts=("shop.example",)))
    command = docker.proxy_deploy(config, web, "f00dcafe", version="v7")
    service, options = parsed(command, tmp_path)
    assert service == "shop-web"
    assert options["target"] == ["f00dcafe:80"] and options["host"] == ["shop.example"]
    assert "--buffer-requests --buffer-responses" in command, "Kamal sends both buffering flags"
    assert options["buffer_requests"] is True and options["buffer_responses"] is True
    assert options["log_request_header"] == ["Cache-Control", "Last-Modified", "User-Agent"]
    assert options["deploy_timeout"] == 30 and options["drain_timeout"] == 30
    assert options["error_pages"] == "", "no error_pages_path, no --error-pages"
    assert options["tls"] is False and options["tls_redirect"] is True


def test_every_pyproxy_option_in_deploy_yml_reaches_the_proxy(tmp_path: Path) -> None:
    proxy = ProxySettings(
        hosts=("shop.example", "www.shop.example"),
        ssl=True,
        app_port=3000,
        healthcheck=Healthcheck(path="/healthz", interval=0.5, timeout=2, port=3001, host="internal.shop"),
        response_timeout=12.25,
        buffering=Buffering(
            requests=False, responses=True, memory=2048, max_request_body=10_000, max_response_body=20_000
        ),
        forward_headers=True,
        path_prefixes=("/api",),
        ssl_redirect=False,
        strip_path_prefix=False,
        log_request_headers=("X-Request-Start",),
        log_response_headers=("X-Runtime", "ETag"),
        canonical_host="shop.example",
        tls_staging=True,
        acme_directory="https://ca.example/acme/directory",
        acme_eab_kid=Credential("kid-123"),
        acme_eab_hmac_key=Credential("EAB_HMAC", secret=True),
        tls_on_demand_url="/tls-allowed",
        read_targets=("replica-1:3000", "replica-2:3000"),
        read_target_websockets=True,
        writer_affinity_timeout=2,
        client_ip_header="CF-Connecting-IP",
        scope_cookie_paths=True,
        exclude_metrics_paths=("/up", "/assets"),
        targets=("10.0.0.9:3000",),
    )
    config, web = app(proxy, deploy_timeout=45, drain_timeout=7.5)
    secrets = {"EAB_HMAC": "c2VjcmV0LWhtYWMta2V5"}
    files = proxy_files.service_files(config, "shop-web", proxy, secrets, "web")
    for file in files:
        (tmp_path / file.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file.path).write_bytes(file.content)

    command = docker.proxy_deploy(config, web, "f00dcafe", version="v7")
    assert "c2VjcmV0LWhtYWMta2V5" not in command, "the EAB key is read on the host, never sent in a command"
    _, options = parsed(command, tmp_path)
    assert options["target"] == ["f00dcafe:3000", "10.0.0.9:3000"], "the extra targets are balanced across"
    assert options["host"] == ["shop.example", "www.shop.example"]
    assert options["path_prefix"] == ["/api"] and options["strip_path_prefix"] is False
    assert options["deploy_timeout"] == 45 and options["drain_timeout"] == 7.5
    assert (options["health_check_path"], options["health_check_interval"]) == ("/healthz", 0.5)
    assert (options["health_check_timeout"], options["target_timeout"]) == (2, 12.25)
    assert (options["health_check_port"], options["health_check_host"]) == (3001, "internal.shop")
    assert options["forward_headers"] is True
    assert (options["buffer_requests"], options["buffer_responses"]) == (False, True)
    assert (options["buffer_memory"], options["max_request_body"], options["max_response_body"]) == (
        2048,
        10_000,
        20_000,
    )
    assert options["tls"] is True and options["tls_redirect"] is False and options["tls_staging"] is True
    assert options["tls_acme_directory"] == "https://ca.example/acme/directory"
    assert options["tls_acme_eab_kid"] == "kid-123"
    assert options["tls_acme_eab_hmac_key"] == "c2VjcmV0LWhtYWMta2V5"
    assert options["tls_on_demand_url"] == "/tls-allowed"
    assert options["canonical_host"] == "shop.example"
    assert options["read_target"] == ["replica-1:3000", "replica-2:3000"]
    assert options["read_target_websockets"] is True and options["writer_affinity_timeout"] == 2
    assert options["client_ip_header"] == "CF-Connecting-IP" and options["scope_cookie_paths"] is True
    assert options["exclude_metrics_path"] == ["/up", "/assets"]
    assert options["log_request_header"] == ["X-Request-Start"]
    assert options["log_response_header"] == ["X-Runtime", "ETag"]
    assert [file.mode for file in files] == ["600", "600"], "the credentials stay the SSH user's"


def test_error_pages_and_a_custom_certificate_are_read_from_the_mounted_apps_config(tmp_path: Path) -> None:
    proxy = ProxySettings(hosts=("shop.example",), certificate=SslCertificate("CERT_PEM", "KEY_PEM"))
    config, web = app(proxy, error_pages_path="public", destination="staging")
    _, options = parsed(docker.proxy_deploy(config, web, "f00dcafe", version="v7"), tmp_path)
    assert options["error_pages"] == "/home/kamal-proxy/.apps-config/shop-staging/error_pages/v7"
    assert options["tls"] is True
    assert options["tls_certificate_path"] == "/home/kamal-proxy/.apps-config/shop-staging/tls/web/cert.pem"
    assert options["tls_private_key_path"] == "/home/kamal-proxy/.apps-config/shop-staging/tls/web/key.pem"
    files = proxy_files.service_files(
        config, "shop-web-staging", proxy, {"CERT_PEM": "C", "KEY_PEM": "K"}, "web"
    )
    assert {file.path: file.content for file in files} == {
        ".kamal/proxy/apps-config/shop-staging/tls/web/cert.pem": b"C",
        ".kamal/proxy/apps-config/shop-staging/tls/web/key.pem": b"K",
    }


def test_error_pages_follow_the_version_the_target_container_runs() -> None:
    """Without a version, the pages are those of the target's `version` label: a switch back to an old
    container gets the old version's pages."""
    config, web = app(ProxySettings(), error_pages_path="public")
    command = docker.proxy_deploy(config, web, "0ldc0ntainer")
    label = shlex.quote('{{index .Config.Labels "version"}}')
    assert f'/error_pages/"$(docker inspect --format {label} 0ldc0ntainer)"' in command


def test_an_accessory_service_gets_its_own_targets_and_no_error_pages(tmp_path: Path) -> None:
    config, _ = app(ProxySettings(), error_pages_path="public")
    proxy = ProxySettings(hosts=("db-admin.example",), app_port=8080)
    command = docker.proxy_deploy_command("shop-pgadmin", ["shop-pgadmin:8080"], proxy, config, None)
    service, options = parsed(command, tmp_path)
    assert service == "shop-pgadmin" and options["target"] == ["shop-pgadmin:8080"]
    assert options["error_pages"] == ""


@pytest.mark.parametrize(
    ("seconds", "text"), [(2, "2s"), (2.0, "2s"), (0.5, "0.5s"), (1.25, "1.25s"), (90.5, "90.5s")]
)
def test_durations_are_go_durations(seconds: float, text: str) -> None:
    assert docker.go_duration(seconds) == text


def proxy_run_argv(command: str) -> list[str]:
    """The `docker run` that creates the proxy container when there is none, as sh splits it in ~deploy."""
    start_or_run = command.partition(" && ")[2]
    assert start_or_run.startswith("(docker container start pyproxy 2>/dev/null || docker run ")
    return shlex.split(start_or_run.partition(" || ")[2].removesuffix(")").replace("$PWD", "/home/deploy"))


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[index + 1] for index, arg in enumerate(argv) if arg == flag]


def test_the_proxy_container_runs_as_proxy_run_says() -> None:
    run = ProxyRun(
        registry="registry.example:5000",
        repository="ops/pyproxy",
        version="v0.10.0",
        http_port=8080,
        https_port=8443,
        bind_ips=("10.0.0.1", "::1"),
        metrics_port=9090,
        debug=True,
        log_max_size="50m",
        options={"cpus": "2", "memory": "512m"},
    )
    config, _ = app(ProxySettings(run=run))
    command = docker.run_proxy(config)
    assert command.startswith(f"mkdir -p {docker.APPS_CONFIG_DIR} && "), "the mounted directory exists"
    argv = proxy_run_argv(command)
    assert argv[:2] == ["docker", "run"]
    assert "/home/deploy/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config" in values(argv, "--volume")
    published = values(argv, "--publish")
    assert published == ["10.0.0.1:8080:80", "10.0.0.1:8443:443", "[::1]:8080:80", "[::1]:8443:443"]
    assert "max-size=50m" in argv and "--expose=9090" in argv
    assert "--cpus=2" in argv and "--memory=512m" in argv
    image = argv.index("registry.example:5000/ops/pyproxy:v0.10.0")
    assert argv[image + 1 :] == ["kamal-proxy", "run", "--debug", "--metrics-port=9090"]


def test_the_proxy_container_defaults_publish_80_and_443_and_publish_false_publishes_nothing() -> None:
    config, _ = app(ProxySettings(image="registry.example/pyproxy:test"))
    argv = proxy_run_argv(docker.run_proxy(config))
    assert values(argv, "--publish") == ["80:80", "443:443"] and "max-size=10m" in argv
    assert argv[-3:] == ["registry.example/pyproxy:test", "kamal-proxy", "run"]
    config, _ = app(ProxySettings(run=ProxyRun(publish=False)))
    assert "--publish" not in docker.run_proxy(config)


DEPLOY_YML = """service: shop
image: shop
servers:
  web:
    hosts: [10.0.0.1]
proxy:
  host: shop.example
  ssl: true
  app_port: 3000
  response_timeout: 1m
  healthcheck: {path: /healthz, interval: 500ms, timeout: 2s, port: 3001, host: internal.shop}
  buffering: {requests: false, memory: 4096, max_response_body: 1000000}
  strip_path_prefix: false
  ssl_redirect: false
  logging: {request_headers: [X-Request-Id], response_headers: [X-Runtime]}
  canonical_host: shop.example
  acme_directory: https://ca.example/acme
  acme_eab_kid: [EAB_KID]
  acme_eab_hmac_key: [EAB_HMAC]
  read_targets: ["10.0.0.7:3000"]
  read_target_websockets: true
  writer_affinity_timeout: 1.5s
  client_ip_header: X-Real-IP
  scope_cookie_paths: true
  exclude_metrics_paths: [/up]
  targets: ["10.0.0.8:3000"]
error_pages_path: public
"""


def test_the_keys_of_deploy_yml_become_the_flags(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deploy.yml").write_text(DEPLOY_YML)
    (tmp_path / "public").mkdir()
    config = load_config(tmp_path, version="v7", environ={})
    web = config.roles[0]
    secrets = {"EAB_KID": "kid-9", "EAB_HMAC": "aG1hYw"}
    for file in proxy_files.service_files(config, "shop-web", web.proxy, secrets, "web"):
        (tmp_path / file.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file.path).write_bytes(file.content)
    _, options = parsed(docker.proxy_deploy(config, web, "f00dcafe", version="v7"), tmp_path)
    assert options["target"] == ["f00dcafe:3000", "10.0.0.8:3000"] and options["target_timeout"] == 60
    assert (options["health_check_interval"], options["health_check_timeout"]) == (0.5, 2)
    assert (options["health_check_port"], options["health_check_host"]) == (3001, "internal.shop")
    assert (options["buffer_requests"], options["buffer_responses"]) == (False, True)
    assert (options["buffer_memory"], options["max_response_body"]) == (4096, 1_000_000)
    assert options["strip_path_prefix"] is False and options["tls_redirect"] is False
    assert options["log_request_header"] == ["X-Request-Id"] and options["log_response_header"] == [
        "X-Runtime"
    ]
    assert (
        options["canonical_host"] == "shop.example"
        and options["tls_acme_directory"] == "https://ca.example/acme"
    )
    assert (options["tls_acme_eab_kid"], options["tls_acme_eab_hmac_key"]) == ("kid-9", "aG1hYw")
    assert options["read_target"] == ["10.0.0.7:3000"] and options["read_target_websockets"] is True
    assert options["writer_affinity_timeout"] == 1.5 and options["client_ip_header"] == "X-Real-IP"
    assert options["scope_cookie_paths"] is True and options["exclude_metrics_path"] == ["/up"]
    assert options["error_pages"] == "/home/kamal-proxy/.apps-config/shop/error_pages/v7"
