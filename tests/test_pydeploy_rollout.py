"""`pydeploy rollout` on the test bed: a canary version beside the live one, sent only the requests whose
`kamal-rollout` cookie `proxy.rollout` picks; `rollout set` widens it; a deploy of the canary's version
promotes it, `rollout stop` ends it; a canary that never turns healthy ends the rollout everywhere, the live
version untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cutover import containers, edit, history
from tests.test_pydeploy import bed, project, pydeploy, version_served  # noqa: F401  (bed: fixture)
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(600)


async def test_a_canary_gets_its_share_and_a_deploy_promotes_it(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    edit(app, ("  app_port: 80\n", "  app_port: 80\n  rollout:\n    allowlist: [beta-tester]\n"))
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0

    rolled = pydeploy(bed, app, "rollout", "deploy", "--version", "v2", "-P")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    for host in bed.hosts:
        assert await version_served(host, "beta-tester") == "v2", "an allow-listed browser gets the canary"
        assert await version_served(host, "someone") == "v1"
        assert await version_served(host) == "v1"
        assert "testapp-web-rollout-v2 running" in containers(bed, host)
    version = pydeploy(bed, app, "app", "version")
    assert version.returncode == 0 and "v2" not in version.stdout, "the live version is still v1"

    listed = pydeploy(bed, app, "rollout", "set", "--list", "other-tester")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for host in bed.hosts:
        assert await version_served(host, "other-tester") == "v2"
        assert await version_served(host, "beta-tester") == "v1", "--list replaces the allow-list"
        assert await version_served(host, "someone") == "v1", "the percentage stays deploy.yml's (0)"
    widened = pydeploy(bed, app, "rollout", "set", "--percent", "100")
    assert widened.returncode == 0, widened.stdout + widened.stderr
    for host in bed.hosts:
        assert await version_served(host, "someone") == "v2", "100% of cookie values"
        assert await version_served(host) == "v1", "no cookie: always the live version"

    ended = pydeploy(bed, app, "rollout", "stop")
    assert ended.returncode == 0, ended.stdout + ended.stderr
    for host in bed.hosts:
        assert await version_served(host, "beta-tester") == "v1"
        assert "rollout" not in containers(bed, host), "the canaries are removed"
    refused = pydeploy(bed, app, "rollout", "set", "--percent", "50")
    assert refused.returncode == 1 and "no rollout of web runs" in refused.stderr, refused.stderr

    assert pydeploy(bed, app, "rollout", "deploy", "--version", "v2", "-P").returncode == 0
    promoted = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    for host in bed.hosts:
        assert await version_served(host) == "v2" and await version_served(host, "beta-tester") == "v2"
        assert "rollout" not in containers(bed, host), "the canary went once its version was live"
        assert history(bed, host) == ["v1", "v2"]


async def test_a_canary_that_never_turns_healthy_ends_the_rollout(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    edit(
        app,
        ("  app_port: 80\n", "  app_port: 80\n  rollout:\n    percentage: 100\n"),
        ("deploy_timeout: 15", "deploy_timeout: 4"),
    )
    assert pydeploy(bed, app, "setup", "--version", "v1", "-P").returncode == 0
    assert pydeploy(bed, app, "rollout", "deploy", "--version", "v2", "-P").returncode == 0
    for host in bed.hosts:
        assert await version_served(host, "anyone") == "v2"

    refused = pydeploy(bed, app, "rollout", "deploy", "--version", "v3", "-P")  # v3's /up answers 404
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "never became healthy" in refused.stderr and "ended on every host" in refused.stderr, (
        refused.stderr
    )
    for host in bed.hosts:
        assert f"{host}: serves only the live version" in refused.stderr
        assert await version_served(host, "anyone") == "v1", "no canary left: all to the live version"
        assert "rollout" not in containers(bed, host)
