"""pydeploy's command line and the commands it runs on hosts, without hosts: usage errors, quoting, and
secrets that must never reach a command line."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from deployer import app_commands, audit, docker
from deployer.config import load_config
from deployer.output import Output

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """service: shop
image: acme/shop
servers:
  web:
    - 10.0.0.1
  jobs:
    hosts:
      - 10.0.0.2
    cmd: bin/jobs
    proxy: false
proxy:
  hosts: [shop.example, www.shop.example]
  app_port: 3000
  healthcheck:
    path: /healthz
env:
  clear:
    RAILS_ENV: production
  secret:
    - DATABASE_URL
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deploy.yml").write_text(CONFIG)
    (tmp_path / ".kamal").mkdir()
    (tmp_path / ".kamal" / "secrets").write_text("DATABASE_URL='postgres://u:p@db/shop'\n")
    return tmp_path


def pydeploy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployer", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "args", [["--bogus"], ["deploy", "--nope"], ["app"], ["rollback", "a", "b"], ["frobnicate"]]
)
def test_bad_usage_is_one_line_and_exit_2(app: Path, args: list[str]) -> None:
    done = pydeploy(app, *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("pydeploy: ")


def test_unmatched_hosts_or_roles_are_named(app: Path) -> None:
    done = pydeploy(app, "-h", "10.9.*", "app", "containers", "--version", "v1")
    assert (done.returncode, done.stderr.strip()) == (2, "pydeploy: No --hosts match for 10.9.*")


def test_a_missing_secret_is_a_clear_error(app: Path) -> None:
    (app / ".kamal" / "secrets").write_text("OTHER=1\n")
    done = pydeploy(app, "config")
    assert done.returncode == 2 and "DATABASE_URL" in done.stderr


def test_the_app_container_gets_secrets_only_through_its_env_file(app: Path) -> None:
    config = load_config(app, version="abc123")
    web = config.roles[0]
    command = docker.run_app(config, web, "abc123", "10.0.0.1")
    assert "postgres://" not in command and "DATABASE_URL" not in command
    assert "--env-file .kamal/apps/shop/env/roles/web.env" in command
    assert "--env RAILS_ENV=production" in command and "--name shop-web-abc123" in command
    assert "--label version=abc123" in command and "--label destination=" in command
    env_file = docker.env_file(config, web, {"DATABASE_URL": "postgres://u:p@db/shop\nx"})
    assert env_file == b"DATABASE_URL=postgres://u:p@db/shop\\nx\n"


def test_the_proxy_deploy_carries_the_role_settings(app: Path) -> None:
    config = load_config(app, version="abc123")
    command = docker.proxy_deploy(config, config.roles[0], "f00dcafe")
    assert command.startswith("docker exec pyproxy kamal-proxy deploy shop-web ")
    for flag in (
        "--target=f00dcafe:3000",
        "--host=shop.example",
        "--host=www.shop.example",
        "--health-check-path=/healthz",
        "--deploy-timeout=30s",
        "--drain-timeout=30s",
    ):
        assert flag in command
    jobs = config.roles[1]
    assert jobs.proxy is None and docker.run_app(config, jobs, "abc123", "10.0.0.2").endswith(" bin/jobs")


def test_a_terminal_gets_a_live_table_of_steps_and_secrets_never_show() -> None:
    out = Output(lambda text: text.replace("hunter2", "[REDACTED]"))
    out.console = Console(file=io.StringIO(), force_terminal=True, highlight=False, width=100)  # in memory
    out.start_live()
    with out.step("10.0.0.1", "pull"):
        out.line("password hunter2 echoed by a command")
    with pytest.raises(RuntimeError), out.step("10.0.0.2", "pull"):
        raise RuntimeError
    out.stop_live()
    shown = out.console.file.getvalue()
    assert "10.0.0.1" in shown and "done in" in shown and "FAILED after" in shown
    assert "hunter2" not in shown and "[REDACTED]" in shown


def test_role_options_cannot_reach_the_shell(app: Path) -> None:
    config_file = app / "config" / "deploy.yml"
    config_file.write_text(
        config_file.read_text().replace(
            "    cmd: bin/jobs\n", '    cmd: bin/jobs\n    options:\n      "x $(touch /tmp/pwned)": 1\n'
        )
    )
    config = load_config(app, version="abc123")
    command = docker.run_app(config, config.roles[1], "abc123", "10.0.0.2")
    assert "'--x $(touch /tmp/pwned)=1'" in command, command


def test_a_secret_is_redacted_also_as_the_env_file_escapes_it() -> None:
    from deployer.secrets import redact

    secret = "line one\nline\\two"
    printed = "DB=line one\\nline\\\\two"  # what `env` in the container shows
    assert "line one" not in redact(printed, {"DB": secret})


def test_options_after_an_alias_are_pydeploys_not_the_commands(app: Path) -> None:
    config_file = app / "config" / "deploy.yml"
    config_file.write_text(config_file.read_text() + "aliases:\n  shell: app exec sh\n")
    done = pydeploy(app, "shell", "-h", "10.9.9.9", "--version", "v1")
    assert (done.returncode, done.stderr.strip()) == (2, "pydeploy: No --hosts match for 10.9.9.9")


def with_aliases(app: Path) -> Path:
    config_file = app / "config" / "deploy.yml"
    config_file.write_text(
        config_file.read_text()
        + 'aliases:\n  console: app exec --interactive --reuse "bin/rails console"\n  tail: app logs -f\n'
    )
    return app


def test_interactive_commands_refuse_without_a_terminal(app: Path) -> None:
    for args in (
        ["app", "exec", "-i", "sh"],
        ["console"],
        ["console", "-h", "10.0.0.1"],
        ["server", "exec", "-i", "sh"],
    ):
        done = pydeploy(with_aliases(app) if args[0] == "console" else app, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "pydeploy: an interactive command needs a terminal on stdin (run it from a terminal, or drop -i)"
        ]


def test_options_after_an_alias_go_to_the_command_the_alias_names(app: Path) -> None:
    """`tail -n 5` is `app logs -n 5 -f`: parsed (the host filter is what stops it, not the parser)."""
    done = pydeploy(with_aliases(app), "tail", "-n", "5", "--grep", "GET", "-h", "10.9.9.9")
    assert (done.returncode, done.stderr.strip()) == (2, "pydeploy: No --hosts match for 10.9.9.9")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["app", "exec"], "No command provided. You must specify a command to execute."),
        (["app", "exec", "-e", "NOVALUE", "env"], "-e 'NOVALUE': expected KEY=VALUE"),
        (["--lock-wait-timeout", "soon", "prune", "all"], "'soon': expected seconds, or a duration"),
        (["remove"], "This will remove all containers and images: no terminal to confirm on; add -y"),
        (
            ["prune", "containers", "--retain", "0"],
            "argument --retain: '0': must be a whole number of at least 1",
        ),
    ],
)
def test_bad_command_use_says_what_is_wrong(app: Path, args: list[str], error: str) -> None:
    """Each refused before any host is connected to."""
    done = pydeploy(app, *args, "-h", "10.0.0.1")
    assert (done.returncode, len(done.stderr.strip().splitlines())) == (2, 1), done.stderr
    assert error in done.stderr


def test_exec_runs_the_command_as_kamal_does_in_a_new_or_the_running_container(app: Path) -> None:
    config = load_config(app, version="v1")
    web = config.roles[0]
    console = app_commands.joined(["bin/rails console"])
    fresh = app_commands.exec_in_new(config, web, "v1", console, {"DEBUG": "1 2"}, interactive=True)
    assert re.fullmatch(
        r"docker run -it --rm --name shop-web-exec-v1-[0-9a-f]{6} --network pydeploy"
        r" --env RAILS_ENV=production --env-file \.kamal/apps/shop/env/roles/web\.env --env 'DEBUG=1 2'"
        r" acme/shop:v1 bin/rails console",
        fresh,
    ), fresh
    assert "postgres://" not in fresh, "secrets only through the env file"
    reused = app_commands.exec_in_running(config, web, "v1", console)
    assert reused == "docker exec shop-web-v1 bin/rails console"


def test_logs_narrowed_by_grep_since_and_lines(app: Path) -> None:
    config = load_config(app, version="v1")
    web = config.roles[0]
    assert app_commands.logs(config, web, "v1") == "docker logs --timestamps --tail 100 shop-web-v1 2>&1"
    grepped = app_commands.logs(config, web, "v1", grep="GET /up", grep_options="-i -v", since="5m")
    assert grepped == (
        "docker logs --timestamps --since 5m shop-web-v1 2>&1 | grep -i -v -e 'GET /up' || [ $? -eq 1 ]"
    ), "all lines since then, no match is not a failure"
    followed = app_commands.logs(config, web, "v1", grep="x", timestamps=False, follow=True)
    assert followed == "docker logs --tail 10 --follow shop-web-v1 2>&1 | grep --line-buffered -e x"
    assert "--tail 10 --follow" in app_commands.logs(config, web, "v1", follow=True)


def test_maintenance_stops_the_service_in_the_proxy_with_the_message(app: Path) -> None:
    config = load_config(app, version="v1")
    web = config.roles[0]
    assert app_commands.maintenance(config, web, 5, "Back at 5 o'clock") == (
        "docker exec pyproxy kamal-proxy stop shop-web --drain-timeout=5s --message='Back at 5 o'\"'\"'clock'"
    )
    assert app_commands.live(config, web) == "docker exec pyproxy kamal-proxy resume shop-web"


def test_audit_lines_are_kamals(app: Path) -> None:
    config = load_config(app, version="v1")
    line = audit.audit_line(config, "Pruned images", role="web")
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] \[[^]]+\] \[web\] Pruned images", line), line
    staging = load_config(app, destination=None, version="v1")
    assert audit.log_path(staging) == ".kamal/shop-audit.log"
    assert audit.record_command(config, "it's done").endswith(" >> .kamal/shop-audit.log")


def test_secrets_print_shows_them_and_extract_finds_one_in_fetched_json(app: Path) -> None:
    printed = pydeploy(app, "secrets", "print")
    assert (printed.returncode, printed.stdout) == (0, "DATABASE_URL=postgres://u:p@db/shop\n")
    fetched = '{"Private/shop/DATABASE_URL": "pg://x", "Private/shop/KEY": "k1", "KEY2": "k2"}'
    assert pydeploy(app, "secrets", "extract", "KEY", fetched).stdout == "k1\n"
    assert pydeploy(app, "secrets", "extract", "KEY2", fetched).stdout == "k2\n"
    missing = pydeploy(app, "secrets", "extract", "NOPE", fetched)
    assert (missing.returncode, missing.stderr) == (2, "pydeploy: Could not find secret NOPE\n")
    assert pydeploy(app, "secrets", "extract", "KEY", "{not json").returncode == 2
