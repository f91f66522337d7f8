"""The proof that pyproxy is a drop-in for kamal-proxy: the real Kamal v2.12.0 (../shared/kamal) deploys the
test bed's app to its two hosts with the image from our Dockerfile as its proxy, unchanged.

One app's life, as a Kamal user lives it: `kamal setup` (the image booted by `proxy.run`), `kamal deploy
-P` of v2 while a client polls both hosts, `kamal app maintenance --message` and `kamal app live`, `kamal
rollback` under load, `kamal proxy reboot`, then the legacy `kamal proxy boot_config set`, a reboot by it
and one more deploy.
Deploys use -P/--skip-push (the images are in the bed's registry already): plain `kamal deploy` wants a local
`docker buildx`, which Debian 12 lacks (shared/kamal/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kamal_support import (
    APP_HOST,
    Poller,
    eventually,
    kamal_dir,
    kamal_unavailable_reason,
    on_host,
    request,
    served,
)
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.timeout(900),  # the first test may pay for the bed's first bring-up
    pytest.mark.skipif(kamal_unavailable_reason() is not None, reason=kamal_unavailable_reason() or ""),
]

MESSAGE = "Moving to a bigger database, back at five"
ERROR_PAGE = "<p>Custom Maintenance Page: {{ .Message }}</p>\n"  # a Go template, as in Kamal's own tests


@pytest.fixture
def bed(testbed: Testbed) -> Iterator[Testbed]:  # noqa: F811
    """The bed, with its hosts made fresh again after the test."""
    yield testbed
    testbed.reset()


def deploy_yml(bed: Testbed, run: bool) -> str:
    hosts = "\n".join(f"      - {host}" for host in bed.hosts)
    proxy_run = (
        f"""  run:
    registry: {bed.registry}
    repository: {bed.kamal_proxy_repository}
    version: {bed.kamal_proxy_version}
"""
        if run
        else ""
    )
    return f"""service: testapp
image: testapp
servers:
  web:
    hosts:
{hosts}
proxy:
  host: {APP_HOST}
  app_port: 80
  healthcheck:
    path: /up
    interval: 1
{proxy_run}registry:
  server: {bed.registry}
  username: {bed.registry_user}
  password:
    - KAMAL_REGISTRY_PASSWORD
ssh:
  user: {bed.ssh_user}
  keys_only: true
  keys:
    - {bed.ssh_key}
builder:
  arch: amd64
error_pages_path: error_pages
deploy_timeout: 15
drain_timeout: 5
"""


def project(bed: Testbed, path: Path) -> Path:
    """An app's repository as a Kamal user has it: config/deploy.yml, .kamal/secrets, error pages, git."""
    (path / "config").mkdir(parents=True)
    (path / "config" / "deploy.yml").write_text(deploy_yml(bed, run=True))
    (path / ".kamal").mkdir()
    (path / ".kamal" / "secrets").write_text(f"KAMAL_REGISTRY_PASSWORD={bed.registry_password}\n")
    (path / "error_pages").mkdir()
    (path / "error_pages" / "503.html").write_text(ERROR_PAGE)
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "app"]):
        subprocess.run(["git", *command], cwd=path, check=True, capture_output=True)
    return path


def kamal_home(bed: Testbed, path: Path) -> Path:
    """A HOME whose ~/.ssh/known_hosts knows the bed's hosts (Kamal checks host keys against it)."""
    ssh = path / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    shutil.copy(bed.ssh_known_hosts, ssh / "known_hosts")
    return path


class Kamal:
    def __init__(self, app: Path, home: Path) -> None:
        found = kamal_dir()
        assert found is not None
        self.bin = found / "bin" / "kamal"
        self.app = app
        self.env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
        self.env |= {"HOME": str(home)}
        self.env.pop("VERSION", None)  # Kamal's fallback for --version

    def __call__(self, *args: str) -> str:
        """Run `kamal ARGS` in the app's directory; its output, or fail with it."""
        done = subprocess.run(
            [str(self.bin), *args], cwd=self.app, env=self.env, capture_output=True, text=True, timeout=300
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"kamal {' '.join(args)} exited {done.returncode}:\n{output[-6000:]}"
        return output


async def every_host_serves(bed: Testbed, version: str) -> None:
    for host in bed.hosts:
        assert await served(host) == version, host


def proxy_image_on(bed: Testbed, host: str) -> str:
    return on_host(bed, host, "docker inspect kamal-proxy --format '{{.Config.Image}}'").strip()


async def test_kamal_deploys_through_our_image_as_its_proxy(bed: Testbed, tmp_path: Path) -> None:
    kamal = Kamal(project(bed, tmp_path / "app"), kamal_home(bed, tmp_path / "home"))

    setup = kamal("setup", "-P", "--version", "v1")
    assert f"{bed.kamal_proxy_image} kamal-proxy run" in setup, "booted by proxy.run"
    assert "docker exec kamal-proxy kamal-proxy deploy testapp-web --target=" in setup
    await every_host_serves(bed, "v1")
    assert all(proxy_image_on(bed, host) == bed.kamal_proxy_image for host in bed.hosts)

    poller = Poller(bed.hosts)
    deployed = await poller.during(lambda: kamal("deploy", "-P", "--version", "v2"))
    assert "--buffer-requests --buffer-responses" in deployed and "--error-pages=" in deployed
    assert not poller.failed, poller.failed[:5]
    assert poller.ok > 20 and poller.versions == {"v1", "v2"}, (poller.ok, poller.versions)
    await every_host_serves(bed, "v2")

    kamal("app", "maintenance", "--message", MESSAGE)
    for host in bed.hosts:
        down = await request(host)
        assert down.status == 503, (host, down.status, down.text)
        assert f"Custom Maintenance Page: {MESSAGE}" in down.text, "the uploaded page, readable by the proxy"
    kamal("app", "live")
    await every_host_serves(bed, "v2")

    poller = Poller(bed.hosts)
    rolled_back = await poller.during(lambda: kamal("rollback", "v1"))
    assert not poller.failed, poller.failed[:5]
    assert poller.ok > 10, rolled_back
    await every_host_serves(bed, "v1")

    rebooted = kamal("proxy", "reboot", "-y")
    assert (
        "docker container prune --force --filter label=org.opencontainers.image.title=kamal-proxy" in rebooted
    )
    await eventually(lambda: every_host_serves(bed, "v1"))  # the routes from the state on the volume

    # The deprecated way to the same image: `boot_config set` files and the legacy boot line.
    (kamal.app / "config" / "deploy.yml").write_text(deploy_yml(bed, run=False))
    kamal(
        "proxy",
        "boot_config",
        "set",
        "--registry",
        bed.registry,
        "--repository",
        bed.kamal_proxy_repository.removesuffix("/kamal-proxy"),  # Kamal adds the /kamal-proxy
        "--image_version",
        bed.kamal_proxy_version,
    )
    rebooted = kamal("proxy", "reboot", "-y")
    assert "| xargs docker run --name kamal-proxy" in rebooted, "booted by the legacy line"
    await eventually(lambda: every_host_serves(bed, "v1"))
    assert all(proxy_image_on(bed, host) == bed.kamal_proxy_image for host in bed.hosts)
    kamal("deploy", "-P", "--version", "v2")
    await every_host_serves(bed, "v2")
