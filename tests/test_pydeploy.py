"""pydeploy end to end on the test bed: two SSH hosts with their own dockerd, a registry with a password,
the pyproxy image and the busybox test app (v1, v2 healthy; v3's /up answers 404).

One scenario, in order, as a user lives it: setup + v1, v2 under load, rollback under load, an
unhealthy v3 refused, then the smaller commands against what is running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from tests.kamal_support import Poller
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-db-password-7f1e"
HOST = "app.test"

pytestmark = pytest.mark.timeout(900)  # the first test may pay for the bed's first bring-up


def project(bed: Testbed, path: Path) -> Path:
    """An app's repository as a pydeploy user has it: config/deploy.yml, a staging overlay, secrets."""
    (path / "config").mkdir(parents=True)
    hosts = "\n".join(f"      - {host}" for host in bed.hosts)
    (path / "config" / "deploy.yml").write_text(
        f"""service: testapp
image: testapp
servers:
  web:
    hosts:
{hosts}
proxy:
  host: {HOST}
  app_port: 80
  healthcheck:
    path: /up
    interval: 1
  image: {bed.proxy_image}
registry:
  server: {bed.registry}
  username: {bed.registry_user}
  password:
    - REGISTRY_PASSWORD
env:
  clear:
    GREETING: hello
  secret:
    - DB_PASSWORD
ssh:
  user: {bed.ssh_user}
  keys:
    - {bed.ssh_key}
deploy_timeout: 15
drain_timeout: 5
aliases:
  running: app version
"""
    )
    (path / "config" / "deploy.staging.yml").write_text("env:\n  clear:\n    GREETING: staging\n")
    (path / ".kamal").mkdir()
    (path / ".kamal" / "secrets-common").write_text(
        f"REGISTRY_PASSWORD={bed.registry_password}\nDB_PASSWORD={SECRET}\n"
    )
    return path


def pydeploy(bed: Testbed, app: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYDEPLOY_KNOWN_HOSTS": str(app / "known_hosts"),
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def on_host(bed: Testbed, host: str, *command: str) -> str:
    done = subprocess.run(bed.ssh_command(host, *command), capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


async def version_served(host: str, rollout_cookie: str | None = None) -> str:
    """GET /version through the host's proxy, as a browser asking for app.test would (with this
    `kamal-rollout` cookie, if any)."""
    cookie = f"Cookie: kamal-rollout={rollout_cookie}\r\n" if rollout_cookie else ""
    reader, writer = await asyncio.open_connection(host, 80)
    writer.write(f"GET /version HTTP/1.1\r\nHost: {HOST}\r\n{cookie}Connection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode().strip()


@pytest.fixture
def bed(testbed: Testbed) -> Testbed:  # noqa: F811
    yield testbed
    testbed.reset()


async def test_setup_deploy_rollback_and_a_failed_deploy(bed: Testbed, tmp_path: Path) -> None:
    app = project(bed, tmp_path / "app")

    setup = pydeploy(bed, app, "setup", "--version", "v1", "-P")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    for host in bed.hosts:
        assert await version_served(host) == "v1"
    assert SECRET not in setup.stdout + setup.stderr

    load = Poller(bed.hosts, limit=240, fetch=version_served)
    deploy = await load.during(lambda: pydeploy(bed, app, "deploy", "--version", "v2", "-P"))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert not load.failed, load.failed[:5]
    assert load.ok > 10
    for host in bed.hosts:
        assert await version_served(host) == "v2"
        listing = on_host(bed, host, "docker ps --all --format '{{.Names}} {{.State}}'")
        assert "testapp-web-v1 exited" in listing, "the old container is stopped, and kept for a rollback"
        assert "testapp-web-v2 running" in listing

    load = Poller(bed.hosts, limit=240, fetch=version_served)
    rollback = await load.during(lambda: pydeploy(bed, app, "rollback"))
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert "Rolled back to v1" in rollback.stdout
    assert f"Versions {bed.hosts[0]} has served, oldest first: v1, v2" in rollback.stdout, (
        "listed for the user"
    )
    assert not load.failed, load.failed[:5]
    for host in bed.hosts:
        assert await version_served(host) == "v1"

    failed = pydeploy(bed, app, "deploy", "--version", "v3", "-P")
    assert failed.returncode == 1
    assert "never became healthy" in failed.stderr and "Likely causes" in failed.stderr, failed.stderr
    assert "404" in failed.stderr, "the last health check's answer is shown"
    for host in bed.hosts:
        assert await version_served(host) == "v1", "a failed deploy leaves the previous version serving"

    # Secrets: in the container's environment, nowhere in output or on a command line.
    for host in bed.hosts:
        env = on_host(bed, host, "docker exec testapp-web-v1 env")
        assert f"DB_PASSWORD={SECRET}" in env and "GREETING=hello" in env
        command_line = on_host(bed, host, "docker inspect testapp-web-v1 --format '{{.Path}} {{.Args}}'")
        assert SECRET not in command_line
    executed = pydeploy(bed, app, "app", "exec", "env")
    assert executed.returncode == 0, executed.stderr
    assert "GREETING=hello" in executed.stdout and SECRET not in executed.stdout
    assert "DB_PASSWORD=[REDACTED]" in executed.stdout

    logs = pydeploy(bed, app, "app", "logs", "-n", "5")
    assert logs.returncode == 0 and all(host in logs.stdout for host in bed.hosts), logs.stdout

    aliased = pydeploy(bed, app, "running")
    assert aliased.returncode == 0 and aliased.stdout.count("v1") == len(bed.hosts), aliased.stdout

    back = pydeploy(bed, app, "rollback")
    assert "Rolled back to v2" in back.stdout, "the failed v3 never served: rollback goes to v2"
    again = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert again.returncode == 0, again.stdout + again.stderr
    for host in bed.hosts:
        running = on_host(bed, host, "docker ps --filter label=service=testapp --format '{{.Names}}'")
        assert running.split() == ["testapp-web-v2"], "deploying a version again replaces its container"


async def test_a_second_deploy_is_refused_while_one_runs(bed: Testbed, tmp_path: Path) -> None:
    app = project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    # v3 never becomes healthy: that deploy holds the lock for its whole deploy_timeout.
    first = asyncio.get_running_loop().run_in_executor(
        None, pydeploy, bed, app, "deploy", "--version", "v3", "-P"
    )
    async with asyncio.timeout(60):
        while "Deploying v3" not in pydeploy(bed, app, "lock", "status").stdout:
            assert not first.done(), (await first).stderr
    second = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert second.returncode == 1 and "lock" in second.stderr and "Deploying v3" in second.stderr
    assert (await first).returncode == 1
    assert "no deploy lock" in pydeploy(bed, app, "lock", "status").stdout, "a failed deploy releases it"


async def test_the_lock_refuses_a_second_deploy_and_config_is_redacted(bed: Testbed, tmp_path: Path) -> None:
    app = project(bed, tmp_path / "app")
    acquired = pydeploy(bed, app, "lock", "acquire", "-m", "database migration by hand")
    assert acquired.returncode == 0, acquired.stderr
    status = pydeploy(bed, app, "lock", "status")
    assert "database migration by hand" in status.stdout
    refused = pydeploy(bed, app, "deploy", "--version", "v1", "-P")
    assert refused.returncode == 1
    assert "lock" in refused.stderr and "database migration by hand" in refused.stderr
    assert "pydeploy lock release" in refused.stderr
    assert pydeploy(bed, app, "lock", "release").returncode == 0
    assert "no deploy lock" in pydeploy(bed, app, "lock", "status").stdout

    printed = pydeploy(bed, app, "config")
    assert (
        printed.returncode == 0
        and SECRET not in printed.stdout
        and bed.registry_password not in printed.stdout
    )
    staging = pydeploy(bed, app, "-d", "staging", "config")
    assert "staging" in staging.stdout and "GREETING: staging" in staging.stdout


async def test_bad_deploys_explain_themselves_and_leave_the_previous_version(
    bed: Testbed, tmp_path: Path
) -> None:
    app = project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0

    async def still_v1() -> None:
        for host in bed.hosts:
            assert await version_served(host) == "v1"

    missing = pydeploy(bed, app, "deploy", "--version", "v9", "-P")
    assert missing.returncode == 1
    assert "could not pull" in missing.stderr and "--version" in missing.stderr, missing.stderr
    assert f"{bed.hosts[0]}: v1" in missing.stderr, "the summary says what each host runs"
    await still_v1()

    secrets = app / ".kamal" / "secrets-common"
    right = secrets.read_text()
    secrets.write_text(right.replace(bed.registry_password, "wrong-password"))
    refused = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    secrets.write_text(right)
    assert refused.returncode == 1 and "refused the login" in refused.stderr, refused.stderr
    assert "wrong-password" not in refused.stdout + refused.stderr
    await still_v1()

    config = app / "config" / "deploy.yml"
    last = f"      - {bed.hosts[-1]}\n"
    config.write_text(config.read_text().replace(last, last + "      - 10.200.0.99\n"))
    unreachable = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert unreachable.returncode == 1 and "10.200.0.99" in unreachable.stderr, unreachable.stderr
    assert "10.200.0.99: unreachable" in unreachable.stderr
    await still_v1()


async def test_deploy_builds_the_commit_and_pushes_it(bed: Testbed, tmp_path: Path) -> None:
    app = project(bed, tmp_path / "app")
    for item in (ROOT / "tests" / "testbed" / "apps").iterdir():
        if item.is_dir():
            shutil.copytree(item, app / item.name)
        else:
            shutil.copy(item, app / item.name)
    shutil.copy("/bin/busybox", app / "busybox")
    config = app / "config" / "deploy.yml"
    config.write_text(config.read_text() + "builder:\n  args:\n    VERSION: built-from-git\n")
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "app"]):
        subprocess.run(["git", *command], cwd=app, check=True)
    (tmp_path / "docker").mkdir()
    deployed = pydeploy(bed, app, "deploy", DOCKER_CONFIG=str(tmp_path / "docker"))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "build" in deployed.stdout and "push" in deployed.stdout
    for host in bed.hosts:
        assert await version_served(host) == "built-from-git"


async def test_ssh_trusts_a_new_host_once_refuses_a_changed_key_and_uses_the_jump_host(
    bed: Testbed, tmp_path: Path
) -> None:
    app = project(bed, tmp_path / "app")
    known = app / "known_hosts"
    assert pydeploy(bed, app, "app", "version").returncode == 0
    recorded = known.read_text()
    assert all(host in recorded for host in bed.hosts), "a host seen for the first time is recorded"

    host, _ = recorded.splitlines()[0].split(" ", 1)
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known.write_text(f"{host} {impostor}\n" + "\n".join(recorded.splitlines()[1:]) + "\n")
    changed = pydeploy(bed, app, "app", "version")
    assert changed.returncode == 1 and "host key does not match" in changed.stderr, changed.stderr
    known.write_text(recorded)

    config = app / "config" / "deploy.yml"
    original = config.read_text()
    jump = f"  proxy: root@{bed.hosts[0]}\n"
    config.write_text(original.replace("ssh:\n", "ssh:\n" + jump))
    assert pydeploy(bed, app, "-h", bed.hosts[1], "app", "version").returncode == 0
    config.write_text(original.replace("ssh:\n", "ssh:\n  proxy: root@10.200.0.99\n"))
    through_nothing = pydeploy(bed, app, "-h", bed.hosts[1], "app", "version")
    assert through_nothing.returncode == 1, "the jump host is really used: an unreachable one fails"
