"""Hooks (.kamal/hooks, spec 12): run here with Kamal's KAMAL_* environment, a failing one stops the command
with its output, a broken one is named before anything runs, -H skips them.

The first tests need no hosts: `pre-connect` runs before the first SSH connection, so a command aimed at
a host that refuses connections (port 1 on loopback) shows what the hook got and did. The last one deploys
on the test bed and follows every deploy hook, per boot group.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from tests.test_pydeploy import SECRET, bed, on_host, project, pydeploy, version_served  # noqa: F401
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

# Every hook in these tests: the environment it got in <name>.env (the last run), and a line in hooks.log.
RECORDER = """#!/bin/sh
env | sort > "$0.env"
echo "$(basename "$0") hosts=$KAMAL_HOSTS lock=$KAMAL_LOCK" >> "$(dirname "$0")/hooks.log"
"""


def offline_project(path: Path) -> Path:
    """An app whose only host refuses SSH at once: every command fails after its pre-connect hook."""
    (path / "config").mkdir(parents=True)
    (path / "config" / "deploy.yml").write_text(
        """service: hooked
image: hooked
servers:
  web:
    - 127.0.0.1
  job:
    hosts:
      - 127.0.0.1
    cmd: /job.sh
ssh:
  port: 1
env:
  secret:
    - DB_PASSWORD
"""
    )
    (path / "config" / "deploy.staging.yml").write_text("env:\n  clear:\n    GREETING: staging\n")
    (path / ".kamal" / "hooks").mkdir(parents=True)
    (path / ".kamal" / "secrets-common").write_text(f"DB_PASSWORD={SECRET}\n")
    return path


def hook(app: Path, name: str, script: str = RECORDER, mode: int = 0o755) -> Path:
    path = app / ".kamal" / "hooks" / name
    path.write_text(script)
    path.chmod(mode)
    return path


def recorded(app: Path, name: str) -> dict[str, str]:
    text = (app / ".kamal" / "hooks" / f"{name}.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_hook_gets_the_kamal_environment_and_the_secrets(tmp_path: Path) -> None:
    app = offline_project(tmp_path / "app")
    hook(app, "pre-connect")
    done = pydeploy(
        None, app, "-d", "staging", "-r", "web", "--version", "0123456789abcdef", "app", "version"
    )
    assert done.returncode == 1, "the host refuses SSH, after the hook"
    env = recorded(app, "pre-connect")
    assert env["KAMAL_SERVICE"] == "hooked"
    assert env["KAMAL_VERSION"] == "0123456789abcdef"
    assert env["KAMAL_SERVICE_VERSION"] == "hooked@0123456", "a commit is abbreviated to 7 characters"
    assert env["KAMAL_DESTINATION"] == "staging"
    assert env["KAMAL_HOSTS"] == "127.0.0.1"
    assert env["KAMAL_ROLES"] == "web", "-r was given"
    assert env["KAMAL_COMMAND"] == "app" and env["KAMAL_SUBCOMMAND"] == "version"
    assert env["KAMAL_LOCK"] == "false"
    assert env["KAMAL_PERFORMER"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["KAMAL_RECORDED_AT"])
    assert env["DB_PASSWORD"] == SECRET, "pre-connect gets the secrets"
    assert "KAMAL_RUNTIME" not in env

    uncommitted = "0123456789abcdef_uncommitted_9f8e7d6c5b4a3921"
    assert pydeploy(None, app, "--version", uncommitted, "lock", "status").returncode == 1
    env = recorded(app, "pre-connect")
    assert env["KAMAL_SERVICE_VERSION"] == f"hooked@{uncommitted}", "an uncommitted version stays whole"
    assert "KAMAL_ROLES" not in env and "KAMAL_DESTINATION" not in env and "KAMAL_SUBCOMMAND" in env


def test_a_failing_hook_stops_the_command_with_its_output(tmp_path: Path) -> None:
    app = offline_project(tmp_path / "app")
    hook(app, "pre-connect", '#!/bin/sh\necho "VPN is down (token $DB_PASSWORD)"\nexit 3\n')
    failed = pydeploy(None, app, "app", "version")
    assert failed.returncode == 1
    assert "Hook `pre-connect` failed (exit status 3):" in failed.stderr
    assert "VPN is down (token [REDACTED])" in failed.stderr, "its output, redacted"
    assert SECRET not in failed.stdout + failed.stderr
    assert "127.0.0.1" not in failed.stderr, "no connection was tried"

    skipped = pydeploy(None, app, "-H", "app", "version")
    assert skipped.returncode == 1 and "Hook" not in skipped.stderr, "-H: no hook, the SSH error instead"
    assert "127.0.0.1" in skipped.stderr, skipped.stderr


def test_build_and_proxy_reboot_hooks_run_before_their_step(tmp_path: Path) -> None:
    app = offline_project(tmp_path / "app")
    hook(app, "pre-build", "#!/bin/sh\necho registry quota exceeded\nexit 1\n")
    refused = pydeploy(None, app, "deploy", "--version", "v2")
    assert refused.returncode == 1 and "Hook `pre-build` failed" in refused.stderr, refused.stderr
    assert "registry quota exceeded" in refused.stderr
    assert "build" not in refused.stdout.replace("pre-build", ""), "no build was started"
    pulled = pydeploy(None, app, "deploy", "--version", "v2", "-P")
    assert pulled.returncode == 1 and "Hook" not in pulled.stderr, "-P builds nothing: no pre-build"

    hook(app, "pre-proxy-reboot")
    hook(app, "post-proxy-reboot")
    rebooted = pydeploy(None, app, "proxy", "reboot")
    assert rebooted.returncode == 1, "the host refuses SSH"
    env = recorded(app, "pre-proxy-reboot")
    assert env["KAMAL_COMMAND"] == "proxy" and env["KAMAL_SUBCOMMAND"] == "reboot"
    assert "DB_PASSWORD" not in env, "only pre-connect, pre-deploy and post-deploy get the secrets"
    assert not (app / ".kamal" / "hooks" / "post-proxy-reboot.env").exists(), "the reboot failed"


def test_hook_output_is_shown_with_verbose_only(tmp_path: Path) -> None:
    app = offline_project(tmp_path / "app")
    hook(app, "pre-connect", "#!/bin/sh\necho connected to the VPN\n")
    assert "connected to the VPN" not in pydeploy(None, app, "app", "version").stdout
    assert "connected to the VPN" in pydeploy(None, app, "-v", "app", "version").stdout


def test_a_hook_that_cannot_run_is_named_before_anything_runs(tmp_path: Path) -> None:
    app = offline_project(tmp_path / "app")
    hook(app, "pre-connect")
    hook(app, "pre-deploy", mode=0o644)
    refused = pydeploy(None, app, "app", "version")
    assert refused.returncode == 2
    assert "The hook .kamal/hooks/pre-deploy is not executable" in refused.stderr, refused.stderr
    assert not (app / ".kamal" / "hooks" / "pre-connect.env").exists(), "not even pre-connect ran"
    assert pydeploy(None, app, "-H", "app", "version").returncode == 1, "-H: the hooks do not matter"

    (app / ".kamal" / "hooks" / "pre-deploy").chmod(stat.S_IRWXU)
    hook(app, "post-traefik-reboot")
    renamed = pydeploy(None, app, "-H", "app", "version")
    assert renamed.returncode == 2
    assert "rename post-traefik-reboot to post-proxy-reboot" in renamed.stderr, renamed.stderr


@pytest.mark.timeout(600)
async def test_deploy_runs_each_hook_in_order_per_boot_group(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    config = app / "config" / "deploy.yml"
    config.write_text(config.read_text() + "boot:\n  limit: 1\n")
    (app / ".kamal" / "hooks").mkdir()
    for name in ("pre-connect", "docker-setup", "pre-build", "pre-deploy", "pre-app-boot", "post-app-boot"):
        hook(app, name)
    hook(app, "post-deploy")

    setup = pydeploy(bed, app, "setup", "--version", "v1", "-P")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    first, second = bed.hosts
    log = (app / ".kamal" / "hooks" / "hooks.log").read_text().splitlines()
    both = f"{first},{second}"
    assert log == [
        f"pre-connect hosts={both} lock=false",
        f"docker-setup hosts={both} lock=false",
        f"pre-deploy hosts={both} lock=true",
        f"pre-app-boot hosts={first} lock=true",
        f"post-app-boot hosts={first} lock=true",
        f"pre-app-boot hosts={second} lock=true",
        f"post-app-boot hosts={second} lock=true",
        f"post-deploy hosts={both} lock=false",
    ], "one boot group per host (boot.limit 1); no pre-build with -P"
    deployed = recorded(app, "post-deploy")
    assert deployed["KAMAL_COMMAND"] == "setup" and deployed["KAMAL_VERSION"] == "v1"
    assert deployed["KAMAL_RUNTIME"].isdigit()
    assert deployed["DB_PASSWORD"] == SECRET
    assert "DB_PASSWORD" not in recorded(app, "pre-app-boot"), "only pre-connect, pre-deploy, post-deploy"
    for host in bed.hosts:
        assert await version_served(host) == "v1"

    (app / ".kamal" / "hooks" / "hooks.log").unlink()
    skipped = pydeploy(bed, app, "-H", "deploy", "--version", "v2", "-P")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert not (app / ".kamal" / "hooks" / "hooks.log").exists(), "-H: no hook ran"
    for host in bed.hosts:
        assert await version_served(host) == "v2"
