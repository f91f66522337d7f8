"""The image from our Dockerfile as Kamal's proxy container, driven by the exact lines Kamal v2.12.0 runs on a
host (shared/specs/kamal-invocations.md), over SSH on a test-bed host, without Kamal itself
(tests/test_kamal.py runs the real one).

One host's life, in order: `kamal proxy boot` by the legacy boot-config line (the image reference from
`.kamal/proxy/image*` as `kamal proxy boot_config set` writes them, the default CMD); an app deployed with
Kamal's default `kamal-proxy deploy` flags; every other flag Kamal can send, and `remove`; a switch to v2
under load; a TLS service with a certificate uploaded as Kamal uploads it; maintenance with an uploaded
error page, and back; `kamal proxy reboot` (stop, prune by label, the proxy.run line with --debug and
--metrics-port) on the same volume, which restores the routes.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kamal_support import ROOT, Poller, eventually, on_host, request, served
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(900)  # the first test may pay for the bed's first bring-up

# lib/kamal/commands/proxy.rb, as the host's shell receives them (kamal-invocations.md 1a, 1b, 1c).
LEGACY_BOOT = (
    "docker container start kamal-proxy || "
    'echo $(cat .kamal/proxy/options 2> /dev/null || echo "--publish 80:80 --publish 443:443'
    ' --log-opt max-size=10m") $(cat .kamal/proxy/image 2> /dev/null || echo "basecamp/kamal-proxy"):'
    '$(cat .kamal/proxy/image_version 2> /dev/null || echo "v0.9.2")'
    ' $(cat .kamal/proxy/run_command 2> /dev/null || echo "")'
    " | xargs docker run --name kamal-proxy --network kamal --detach --restart unless-stopped"
    " --volume kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy"
    " --volume $PWD/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config"
)
RUN_CONFIG_BOOT = (
    "docker run --name kamal-proxy --network kamal --detach --restart unless-stopped"
    " --volume kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy"
    " --volume $PWD/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config"
    " --publish 80:80 --publish 443:443 --log-opt max-size=10m --expose=9090"
    ' {image} kamal-proxy run --debug --metrics-port "9090"'
)
STOP = "docker container stop kamal-proxy"
PRUNE = "docker container prune --force --filter label=org.opencontainers.image.title=kamal-proxy"
APPS_CONFIG = "mkdir -p .kamal/proxy/apps-config"
VERSION_CHECK = "docker inspect kamal-proxy --format '{{.Config.Image}}' | awk -F: '{print $NF}'"
# lib/kamal/commands/app/proxy.rb with Kamal's defaults (deploy_timeout and drain_timeout 30, the default
# logged headers) and an error_pages_path.
DEPLOY = (
    'docker exec kamal-proxy kamal-proxy deploy testapp-web --target="{target}:80" --deploy-timeout="30s"'
    ' --drain-timeout="30s" --buffer-requests --buffer-responses --log-request-header="Cache-Control"'
    ' --log-request-header="Last-Modified" --log-request-header="User-Agent"'
    ' --error-pages="/home/kamal-proxy/.apps-config/testapp/error_pages/{version}"'
)
# Kamal's integration app (test/integration/docker/deployer/app_with_roles): every flag it can send that the
# default line lacks.
DEPLOY_ALL_FLAGS = (
    'docker exec kamal-proxy kamal-proxy deploy app_with_roles-web --target="{target}:80" --host="localhost"'
    ' --deploy-timeout="2s" --drain-timeout="2s" --health-check-interval="1s" --health-check-timeout="1s"'
    ' --health-check-path="/up" --target-timeout="2s" --buffer-requests="false" --buffer-responses="false"'
    ' --buffer-memory="400000" --max-request-body="40000000" --max-response-body="40000000" --forward-headers'
    ' --log-request-header="Cache-Control" --log-request-header="X-Forwarded-Proto"'
    ' --log-response-header="X-Request-ID" --log-response-header="X-Request-Start"'
)
REMOVE_ALL_FLAGS = "docker exec kamal-proxy kamal-proxy remove app_with_roles-web"
LIST = "docker exec kamal-proxy kamal-proxy list"  # not a Kamal line: to look
# ssl: {certificate_pem:, private_key_pem:} for the role web: the files Kamal uploads and the flags it sends.
TLS_DIR = ".kamal/proxy/apps-config/testapp/tls/web"
DEPLOY_TLS = (
    'docker exec kamal-proxy kamal-proxy deploy testapp-secure --target="{target}:80" --host="secure.test"'
    " --tls"
    ' --tls-certificate-path="/home/kamal-proxy/.apps-config/testapp/tls/web/cert.pem"'
    ' --tls-private-key-path="/home/kamal-proxy/.apps-config/testapp/tls/web/key.pem"'
    ' --deploy-timeout="30s" --drain-timeout="30s" --buffer-requests --buffer-responses'
    ' --log-request-header="Cache-Control" --log-request-header="Last-Modified"'
    ' --log-request-header="User-Agent"'
)
MESSAGE = "Upgrading the database, back at 5 o'clock"
RENDERED = "Upgrading the database, back at 5 o&#39;clock"  # as Go's html/template escapes it in a page
MAINTENANCE = (
    f'docker exec kamal-proxy kamal-proxy stop testapp-web --drain-timeout="30s" --message="{MESSAGE}"'
)
LIVE = "docker exec kamal-proxy kamal-proxy resume testapp-web"
ERROR_PAGE = "<h1>Custom Maintenance Page: {{ .Message }}</h1>\n"  # a Go template, as Kamal's users write
FIRST_BOOT = "No previous state to restore"


@pytest.fixture
def bed(testbed: Testbed) -> Iterator[Testbed]:  # noqa: F811
    """The bed, with its hosts made fresh again after the test."""
    yield testbed
    testbed.reset()


def version_tuple(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.removeprefix("v").split("."))


def test_the_dockerfile_labels_the_version_pyproject_declares() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={version}\n" in dockerfile, "the image's version label and its v<version> tag agree"
    assert version_tuple(version) >= (0, 9, 2), "Kamal refuses a proxy image tagged below v0.9.2"
    assert not re.search(r"^ENTRYPOINT", dockerfile, re.M), (
        "Kamal runs `IMAGE kamal-proxy run`: no entrypoint"
    )


def start_app(bed: Testbed, host: str, version: str) -> str:
    """A container of the test app as Kamal's `app boot` starts one; its short ID, Kamal's target."""
    on_host(
        bed,
        host,
        f"docker run --detach --restart unless-stopped --name testapp-web-{version} --network kamal"
        f' --log-opt max-size="10m" --label service="testapp" --label role="web" {bed.app(version)}',
    )
    return on_host(
        bed, host, f"docker container ls --all --filter 'name=^testapp-web-{version}$' --quiet"
    ).strip()


def upload_error_pages(bed: Testbed, host: str, version: str) -> None:
    """The error pages where Kamal uploads them: `.kamal/proxy/apps-config/<svc>/error_pages/<version>`."""
    pages = f".kamal/proxy/apps-config/testapp/error_pages/{version}"
    on_host(bed, host, f"mkdir -p {pages} && cat > {pages}/503.html", input=ERROR_PAGE)


def proxy_logs(bed: Testbed, host: str) -> str:
    return on_host(bed, host, "docker logs kamal-proxy 2>&1")  # Kamal's `proxy logs` line, untimestamped


async def test_kamal_boots_the_image_deploys_through_it_and_reboots_it(bed: Testbed, tmp_path: Path) -> None:
    host = bed.hosts[0]
    image = bed.kamal_proxy_image
    inspect = on_host(
        bed,
        host,
        f"docker login -u {bed.registry_user} --password-stdin {bed.registry} >/dev/null"
        f" && docker pull -q {image} >/dev/null"
        " && docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}}"
        f' {{{{index .Config.Labels "org.opencontainers.image.title"}}}}\' {image}',
        input=bed.registry_password,
    )
    assert inspect.split() == ["null", '["kamal-proxy","run"]', "kamal-proxy:kamal-proxy", "kamal-proxy"]

    # kamal proxy boot, legacy path: the network, the image as `boot_config set` records it, then the line.
    on_host(bed, host, "docker network create kamal")
    registry_and_repository, _, tag = image.rpartition(":")
    on_host(bed, host, f"mkdir -p .kamal/proxy && printf %s {registry_and_repository} > .kamal/proxy/image")
    on_host(bed, host, f"printf %s {tag} > .kamal/proxy/image_version")
    on_host(bed, host, APPS_CONFIG)
    on_host(bed, host, LEGACY_BOOT)
    assert on_host(bed, host, VERSION_CHECK).strip() == tag
    assert version_tuple(tag) >= (0, 9, 2), "what `kamal proxy boot` checks before it boots anything"

    # An app, deployed with Kamal's flags: the proxy resolves the container's short ID on the network.
    upload_error_pages(bed, host, "v1")
    deployed = on_host(bed, host, DEPLOY.format(target=start_app(bed, host, "v1"), version="v1"))
    assert await served(host) == "v1", deployed
    assert FIRST_BOOT in proxy_logs(bed, host), "the first boot on a fresh volume says so"
    state = on_host(
        bed, host, "docker exec kamal-proxy sh -c 'id -un; stat -c %U ~/.config/kamal-proxy/*.state'"
    )
    assert state.split() == ["kamal-proxy", "kamal-proxy"], "non-root, its state in the named volume"

    # Every other deploy flag Kamal sends, then its remove.
    v1 = on_host(bed, host, "docker container ls --all --filter 'name=^testapp-web-v1$' --quiet").strip()
    on_host(bed, host, DEPLOY_ALL_FLAGS.format(target=v1))
    assert "app_with_roles-web" in on_host(bed, host, LIST)
    assert (await request(host, host_header="localhost")).text == "v1"
    on_host(bed, host, REMOVE_ALL_FLAGS)
    assert "app_with_roles-web" not in on_host(bed, host, LIST)

    # v2 under load, as `kamal deploy` does it: upload the pages, boot, switch, then stop the old container.
    upload_error_pages(bed, host, "v2")
    target = start_app(bed, host, "v2")

    def switch() -> None:
        on_host(bed, host, DEPLOY.format(target=target, version="v2"))
        on_host(
            bed,
            host,
            "docker container ls --all --filter 'name=^testapp-web-v1$' --quiet | xargs docker stop",
        )

    poller = Poller([host])
    await poller.during(switch)
    assert not poller.failed, poller.failed[:5]
    assert poller.ok > 20 and poller.versions == {"v1", "v2"}, (poller.ok, poller.versions)
    assert await served(host) == "v2"

    # A certificate of the user's, uploaded as Kamal does (root, 0644), served from ~/.apps-config.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=secure.test"
    )
    subprocess.run(
        [
            *openssl.split(),
            "-addext",
            "subjectAltName=DNS:secure.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    for path in (cert, key):
        on_host(
            bed,
            host,
            f"mkdir -p {TLS_DIR} && cat > {TLS_DIR}/{path.name} && chmod 0644 {TLS_DIR}/{path.name}",
            input=path.read_text(),
        )
    on_host(bed, host, DEPLOY_TLS.format(target=target))
    context = ssl.create_default_context(cafile=str(cert))
    secure = await request(host, host_header="secure.test", tls=context)
    assert (secure.status, secure.text) == (200, "v2"), "the uploaded certificate is read and served"

    # kamal app maintenance / kamal app live. The page is readable by the proxy's user though uploaded by
    # root (Kamal's uploads are 0755 directories and 0644 files).
    on_host(bed, host, MAINTENANCE)
    down = await request(host)
    assert down.status == 503 and f"Custom Maintenance Page: {RENDERED}</h1>" in down.text, (
        down.status,
        down.text,
    )
    assert "text/html" in down.headers.get("content-type", "")
    on_host(bed, host, LIVE)
    assert await served(host) == "v2"

    # kamal proxy reboot, now by the proxy.run line: stop, prune by the title label, run on the same volume.
    on_host(bed, host, STOP)
    on_host(bed, host, PRUNE)
    assert not on_host(bed, host, "docker ps --all --quiet --filter 'name=^kamal-proxy$'").strip(), (
        "the label alone finds the stopped container"
    )
    on_host(bed, host, APPS_CONFIG)
    on_host(bed, host, RUN_CONFIG_BOOT.format(image=image))
    assert await eventually(lambda: served(host)) == "v2", "the routes came back from the volume"
    secure = await request(host, host_header="secure.test", tls=context)
    assert (secure.status, secure.text) == (200, "v2"), "and the TLS service with its certificate"
    logs = proxy_logs(bed, host)
    assert FIRST_BOOT not in logs, logs
    on_host(bed, host, DEPLOY.format(target=target, version="v2"))  # a redeploy, as `kamal redeploy` does
    assert '"level": "DEBUG"' in proxy_logs(bed, host), "--debug is taken (the health checks are logged)"
    metrics = on_host(
        bed,
        host,
        f"docker run --rm --network kamal {bed.app('v1')} timeout 10 wget -qO- http://kamal-proxy:9090/metrics",
    )
    assert "# TYPE" in metrics, "--metrics-port serves Prometheus metrics on the kamal network"
    on_host(bed, host, MAINTENANCE)
    down = await request(host)
    assert down.status == 503 and RENDERED in down.text, "the error pages are part of the restored state"
    on_host(bed, host, LIVE)
    assert await served(host) == "v2"
