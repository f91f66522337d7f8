"""A Rails app's Kamal files (tests/apps/kbs), deployed by pydeploy as they are, on the test bed.

The files are what a Kamal user brings: a web role on both hosts and a job role with `cmd`, Postgres and
Redis accessories (stand-ins: the test app listening on their ports), `asset_path`, `error_pages_path`,
an env secret, the aliases `console` and `tail`, ERB with `||` and a backtick command, `interval: 2s`,
a post-deploy hook and a `.sample` hook as `kamal init` leaves it. One scenario, as the user lives it:
setup, a deploy of v2 under load, rollback, maintenance and live, and remove.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kamal_support import Poller, on_host, request
from tests.test_pydeploy import pydeploy
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "kbs"
HOST = "kbs.test"
MASTER_KEY = "0f5e2d6a9b3c4e1f8a7d6c5b4a392817"  # RAILS_MASTER_KEY in the app's .kamal/secrets

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def bed(testbed: Testbed) -> Testbed:  # noqa: F811
    yield testbed
    testbed.reset()


def checkout(path: Path) -> Path:
    """The app's repository as its developer has it (hooks keep their executable bits)."""
    shutil.copytree(APP, path, symlinks=True)
    return path


def kbs(bed: Testbed, app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pydeploy in the app's directory, with the bed's addresses in the environment its ERB reads."""
    return pydeploy(
        bed,
        app,
        *args,
        HOST_1=bed.hosts[0],
        HOST_2=bed.hosts[1],
        REGISTRY=bed.registry,
        PROXY_VERSION=bed.kamal_proxy_version,
        REGISTRY_PASSWORD=bed.registry_password,
        CI_REGISTRY_USER=bed.registry_user,
        SSH_KEY=str(bed.ssh_key),
        DEPLOY_LOG=str(app / "deploys.log"),
    )


async def version(host: str) -> str:
    answer = await request(host, "/version", host_header=HOST)
    assert answer.status == 200, f"{host}: {answer.status} {answer.text[:200]}"
    return answer.text


def names(bed: Testbed, host: str, *, running_only: bool = True) -> set[str]:
    listing = on_host(bed, host, f"docker ps {'' if running_only else '--all'} --format '{{{{.Names}}}}'")
    return set(listing.split())


async def test_a_rails_apps_kamal_files_go_through_setup_deploy_rollback_maintenance_and_remove(
    bed: Testbed, tmp_path: Path
) -> None:
    app = checkout(tmp_path / "kbs")
    first, second = bed.hosts

    setup = kbs(bed, app, "setup", "--version", "v1", "-P")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert {"kbs-db", "kbs-redis", "kbs-web-v1", "kbs-job-v1"} <= names(bed, first)
    assert {"kbs-redis", "kbs-web-v1"} <= names(bed, second) and "kbs-db" not in names(bed, second)
    for host in bed.hosts:
        assert await version(host) == "v1"
    reached = (await request(first, "/cgi-bin/deps", host_header=HOST)).text
    assert "kbs-db:5432 v1" in reached and "kbs-redis:6379 v1" in reached, "the app reaches them by name"
    environment = on_host(bed, first, "docker exec kbs-web-v1 env")
    assert f"RAILS_MASTER_KEY={MASTER_KEY}" in environment
    assert "DEPLOYED_BY=root" in environment, "the backtick command ran"
    assert MASTER_KEY not in setup.stdout + setup.stderr
    db_started = on_host(bed, first, "docker inspect kbs-db --format '{{.State.StartedAt}}'")

    load = Poller(bed.hosts, limit=240, fetch=version)
    deploy = await load.during(lambda: kbs(bed, app, "deploy", "--version", "v2", "-P"))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert not load.failed, load.failed[:5]
    assert load.ok > 10
    for host in bed.hosts:
        assert await version(host) == "v2"
    assert on_host(bed, first, "docker inspect kbs-db --format '{{.State.StartedAt}}'") == db_started, (
        "a deploy never restarts an accessory"
    )
    job_exit = on_host(bed, first, "docker inspect kbs-job-v1 --format '{{.State.ExitCode}}'")
    assert job_exit.strip() == "0", "the old job container was stopped gracefully, its job finished"
    assert "deployed kbs@v2" in (app / "deploys.log").read_text(), "the post-deploy hook ran"

    load = Poller(bed.hosts, limit=240, fetch=version)
    rollback = await load.during(lambda: kbs(bed, app, "rollback"))
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert not load.failed, load.failed[:5]
    for host in bed.hosts:
        assert await version(host) == "v1"

    paused = kbs(bed, app, "app", "maintenance", "--message", "Back at noon")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    for host in bed.hosts:
        answer = await request(host, "/version", host_header=HOST)
        assert answer.status == 503 and "Back at noon" in answer.text, answer.text
        assert "kbs is down for maintenance" in answer.text, "the app's own 503 page (error_pages_path)"
    assert kbs(bed, app, "app", "live").returncode == 0
    for host in bed.hosts:
        assert await version(host) == "v1"

    console = kbs(bed, app, "console")
    assert console.returncode == 2 and "needs a terminal" in console.stderr, console.stderr

    removed = kbs(bed, app, "remove", "-y")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for host in bed.hosts:
        assert not {name for name in names(bed, host, running_only=False) if name.startswith("kbs")}
        left = on_host(bed, host, "ls -a .kamal .kamal/apps .kamal/proxy/apps-config 2>/dev/null || true")
        assert [name for name in left.split() if "kbs" in name] == ["kbs-audit.log"], "the record stays"
    assert "kbs-db/data" in removed.stdout, "it says which data directory it leaves"
