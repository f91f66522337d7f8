"""All or nothing, on the test bed: a deploy moves every host to the new version or leaves every host on the
one before; `deploy --watch` goes back when the new version's health check fails after the switch; a
failing pre-deploy hook stops a deploy before it changed anything; roles without the proxy get their
readiness check and their stop timeout.

The health check here is the test app's /cgi-bin/up, which answers 503 after UP_FAILS_AFTER requests when
the container has that variable: the deploy's own check is request 1, the proxy's before its switch
request 2, so UP_FAILS_AFTER=1 fails the switch and UP_FAILS_AFTER=3 fails the watch just after it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from deployer.config import load_config
from deployer.docker import stop
from tests.kamal_support import Poller
from tests.test_hooks import hook
from tests.test_pydeploy import bed, on_host, project, pydeploy, version_served  # noqa: F401
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)


def cutover_project(bed: Testbed, path: Path) -> Path:  # noqa: F811
    """test_pydeploy's app with the failing-on-demand health check and a short deploy_timeout (the
    proxy's own wait for a container that never turns healthy)."""
    app = project(bed, path)
    edit(app, ("path: /up", "path: /cgi-bin/up"), ("deploy_timeout: 15", "deploy_timeout: 4"))
    return app


def edit(app: Path, *replacements: tuple[str, str]) -> None:
    config = app / "config" / "deploy.yml"
    text = config.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)


def containers(bed: Testbed, host: str) -> str:  # noqa: F811
    return on_host(
        bed, host, "docker ps --all --filter label=service=testapp --format '{{.Names}} {{.State}}'"
    )


def history(bed: Testbed, host: str) -> list[str]:  # noqa: F811
    return on_host(bed, host, "cat .kamal/testapp-versions").split()


async def assert_all_on_v1(bed: Testbed) -> None:  # noqa: F811
    for host in bed.hosts:
        assert await version_served(host) == "v1", host
        listing = containers(bed, host)
        assert "testapp-web-v1 running" in listing, listing
        assert "testapp-web-v2 running" not in listing, "the new containers are stopped"
        assert history(bed, host) == ["v1"], "v2 is not recorded: `rollback` never goes to it"


@pytest.mark.timeout(600)
async def test_a_switch_that_fails_on_the_second_host_switches_the_first_back(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = cutover_project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    first, second = bed.hosts
    # v2's health check fails on the second host only, from its second request: the proxy's, at the switch.
    fails_on_second = (
        f"sh -c '[ \"$KAMAL_HOST\" != {second} ] || export UP_FAILS_AFTER=1; exec /entrypoint.sh'"
    )
    edit(app, ("  web:\n    hosts:\n", f"  web:\n    cmd: {fails_on_second}\n    hosts:\n"))

    load = Poller(bed.hosts, limit=120, fetch=version_served)
    deploy = await load.during(lambda: pydeploy(bed, app, "deploy", "--version", "v2", "-P"))
    assert deploy.returncode == 1, deploy.stdout + deploy.stderr
    assert f"{second}: the new web container never became healthy" in deploy.stderr, deploy.stderr
    assert f"{first}: switched back to v1" in deploy.stderr
    assert f"{second}: never switched: still on v1" in deploy.stderr
    assert not load.failed, load.failed[:5]
    assert "v2" in load.versions, "the first host did serve v2 until it was switched back"
    await assert_all_on_v1(bed)

    # A redeploy of the version that runs, failing the same way: the v1 containers that serve again are
    # named testapp-web-v1 again (not left under the name they were moved aside to).
    load = Poller(bed.hosts, limit=120, fetch=version_served)
    again = await load.during(lambda: pydeploy(bed, app, "deploy", "--version", "v1", "-P"))
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"{first}: switched back to v1" in again.stderr, again.stderr
    assert not load.failed, load.failed[:5]
    await assert_all_on_v1(bed)
    for host in bed.hosts:
        assert "_replaced_" not in containers(bed, host), containers(bed, host)


@pytest.mark.timeout(600)
async def test_deploy_watch_switches_every_host_back_when_the_health_check_fails(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = cutover_project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    edit(app, ("    GREETING: hello\n", "    GREETING: hello\n    UP_FAILS_AFTER: 3\n"))

    load = Poller(bed.hosts, limit=120, fetch=version_served)
    deploy = await load.during(
        lambda: pydeploy(bed, app, "deploy", "--version", "v2", "-P", "--watch", "10s")
    )
    assert deploy.returncode == 1, deploy.stdout + deploy.stderr
    detected = re.search(r"failed its health check ([0-9.]+)s into the watch: answered 503", deploy.stderr)
    assert detected, deploy.stderr
    assert float(detected[1]) < 4, "found at the next health check (interval 1s), not at the watch's end"
    for host in bed.hosts:
        assert f"{host}: switched back to v1" in deploy.stderr, deploy.stderr
    assert not load.failed, load.failed[:5]
    assert "v2" in load.versions, "every host served v2 for a moment"
    await assert_all_on_v1(bed)

    edit(app, ("    UP_FAILS_AFTER: 3\n", ""))
    watched = pydeploy(bed, app, "deploy", "--version", "v2", "-P", "--watch", "2s")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "watch health checks 2s" in watched.stdout
    for host in bed.hosts:
        assert await version_served(host) == "v2"
        assert "testapp-web-v1 exited" in containers(bed, host), "the old containers stop after the watch"
        assert history(bed, host) == ["v1", "v2"]


@pytest.mark.timeout(600)
async def test_a_failing_hook_stops_the_deploy_and_a_later_boot_group_takes_back_the_earlier(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = cutover_project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    (app / ".kamal" / "hooks").mkdir()
    hook(app, "pre-deploy", '#!/bin/sh\necho "3 migrations pending for $KAMAL_VERSION"\nexit 1\n')
    refused = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert refused.returncode == 1
    assert "Hook `pre-deploy` failed (exit status 1):\n3 migrations pending for v2" in refused.stderr
    for host in bed.hosts:
        assert "testapp-web-v2" not in containers(bed, host), "nothing new ran on the hosts"
    await assert_all_on_v1(bed)

    # Boot groups of one host: the first group has switched when the second group's hook fails.
    (app / ".kamal" / "hooks" / "pre-deploy").unlink()
    first, second = bed.hosts
    hook(
        app,
        "post-app-boot",
        f'#!/bin/sh\n[ "$KAMAL_HOSTS" != {second} ] || {{ echo smoke test failed; exit 1; }}\n',
    )
    config = app / "config" / "deploy.yml"
    config.write_text(config.read_text() + "boot:\n  limit: 1\n  wait: 1\n")
    rolled = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert rolled.returncode == 1, rolled.stdout + rolled.stderr
    assert "Hook `post-app-boot` failed" in rolled.stderr and "smoke test failed" in rolled.stderr
    assert f"{first}: switched back to v1" in rolled.stderr
    assert f"{second}: switched back to v1" in rolled.stderr
    await assert_all_on_v1(bed)

    (app / ".kamal" / "hooks" / "post-app-boot").rename(app / ".kamal" / "hooks" / "pre-app-boot")
    stopped = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert stopped.returncode == 1 and "Hook `pre-app-boot` failed" in stopped.stderr
    assert f"{first}: switched back to v1" in stopped.stderr
    assert f"{second}: untouched (its boot group never started)" in stopped.stderr, stopped.stderr
    await assert_all_on_v1(bed)


@pytest.mark.timeout(600)
async def test_roles_without_the_proxy_wait_for_readiness_and_get_their_stop_timeout(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = project(bed, tmp_path / "app")
    first = bed.hosts[0]
    # Job roles whose job takes 3 s after SIGTERM: `worker` may take 5 s, `hasty` gets drain_timeout (1 s).
    jobs = "".join(
        f"  {name}:\n    hosts:\n      - {first}\n    cmd: /job.sh\n{extra}"
        "    env:\n      clear:\n        JOB_FINISH_SECONDS: 3\n"
        for name, extra in (("worker", "    stop_timeout: 5\n"), ("hasty", ""))
    )
    edit(app, ("proxy:\n", f"{jobs}proxy:\n"), ("drain_timeout: 5", "drain_timeout: 1\nreadiness_delay: 1"))
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    deployed = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    def exit_code(name: str) -> str:
        return on_host(bed, first, f"docker inspect --format '{{{{.State.ExitCode}}}}' {name}").strip()

    assert exit_code("testapp-worker-v1") == "0", "SIGTERM, then its 5 s: the job in progress finished"
    assert exit_code("testapp-hasty-v1") == "137", "drain_timeout (1 s), not Docker's 10 s: killed"
    listing = containers(bed, first)
    assert "testapp-worker-v2 running" in listing and "testapp-hasty-v2 running" in listing

    # A job that dies at once is not ready: the deploy fails and nothing switches, web included.
    crash = "    cmd: sh -c 'sleep 0.5; exit 3'\n    options:\n      restart: 'no'\n    stop_timeout"
    edit(app, ("    cmd: /job.sh\n    stop_timeout", crash), ("deploy_timeout: 15", "deploy_timeout: 4"))
    crashing = pydeploy(bed, app, "deploy", "--version", "v1", "-P")
    assert crashing.returncode == 1, crashing.stdout + crashing.stderr
    assert f"{first}: the new worker container is not ready after 4s (exited)" in crashing.stderr, (
        crashing.stderr
    )
    for host in bed.hosts:
        assert await version_served(host) == "v2"
    assert "testapp-worker-v2 running" in containers(bed, first), "the old worker keeps working"


def test_docker_stop_waits_the_roles_stop_timeout(tmp_path: Path) -> None:
    """The `-t` of `docker stop` (spec 8.2): a role's stop_timeout, else the root's; without either, Docker's
    own default for a proxied role (the proxy drained it) and drain_timeout for a role without the proxy."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deploy.yml").write_text(
        """service: app
image: app
servers:
  web: [h1]
  worker:
    hosts: [h1]
    stop_timeout: 7
  cron:
    hosts: [h1]
drain_timeout: 1.5s
"""
    )
    config = load_config(tmp_path, version="v1")
    web, cron, worker = (
        next(role for role in config.roles if role.name == name) for name in ("web", "cron", "worker")
    )
    assert stop(config, web, "v1").endswith("xargs --no-run-if-empty docker stop")
    assert stop(config, cron, "v1").endswith("docker stop -t 2"), "whole seconds, rounded up"
    assert stop(config, worker, "v1").endswith("docker stop -t 7")
    rooted = dataclasses.replace(config, stop_timeout=40)
    assert stop(rooted, web, "v1").endswith("docker stop -t 40") and stop(rooted, cron, "v1").endswith(
        "-t 40"
    )
