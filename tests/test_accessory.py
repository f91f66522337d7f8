"""Accessories (spec 13.6): the docker command lines pydeploy runs for them, checked by the words the
remote shell makes of them, and `pydeploy accessory ...` on the test bed: setup boots them before the app
(which reaches them by name), reboot, remove (data kept and named), and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deployer import accessory
from deployer.config import Accessory, DeployConfig, ProxySettings, load_config
from deployer.errors import DeployError
from deployer.output import Output
from tests import test_pydeploy
from tests.kamal_support import kamal_unavailable_reason, on_host, request
from tests.test_kamal import Kamal, kamal_home
from tests.test_pydeploy import ROOT, pydeploy
from tests.test_pydeploy_commands import Terminal, started
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

SECRET = "pa$$ word\nwith 'quotes'"
DEPLOY_YML = """service: shop
image: acme/shop
servers:
  web:
    - 10.0.0.1
accessories:
  db:
    image: mysql:8.0
    host: 10.0.0.1
    port: 3306
    cmd: --default-authentication-plugin=mysql_native_password
    env:
      clear:
        MYSQL_DATABASE: shop prod
        NOTE: "it's $HOME"
      secret:
        - MYSQL_ROOT_PASSWORD
    files:
      - config/my.cnf:/etc/mysql/my.cnf
      - local: init.sql.erb
        remote: /init/setup.sql
        mode: "0640"
    directories:
      - data:/var/lib/mysql
      - /srv/backups:/backups:ro
    volumes:
      - logs:/var/log/mysql
    options:
      memory: 1g
      cap-add: [SYS_NICE, NET_ADMIN]
    labels:
      team: data
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A project with a MySQL accessory as the Kamal docs show one, and its files."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deploy.yml").write_text(DEPLOY_YML)
    (tmp_path / "config" / "my.cnf").write_bytes(b"[mysqld]\n")
    (tmp_path / "init.sql.erb").write_text("CREATE DATABASE <%= ENV['MYSQL_DATABASE'] %>;\n")
    return tmp_path


@pytest.fixture
def config(app: Path) -> DeployConfig:
    return load_config(app, version="v1")


@pytest.fixture
def db(config: DeployConfig) -> Accessory:
    return config.accessory("db")


def words(command: str, home: Path) -> list[str]:
    """The arguments `docker` gets when the host's shell (in `home`) runs `command`."""
    script = f'docker() {{ printf "%s\\0" "$@"; }}; {command}'
    done = subprocess.run(["sh", "-c", script], cwd=home, capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[index + 1] for index, arg in enumerate(args) if arg == flag]


def test_the_container_runs_named_on_the_deploy_network_with_kamals_labels_and_ours(
    config: DeployConfig, db: Accessory, tmp_path: Path
) -> None:
    args = words(accessory.run(config, db, "10.0.0.1"), tmp_path)
    assert args[:3] == ["run", "--name", "shop-db"]
    assert pairs(args, "--network") == ["pydeploy"], "the app reaches shop-db by name"
    assert pairs(args, "--restart") == ["unless-stopped"]
    assert pairs(args, "--publish") == ["3306:3306"]
    assert pairs(args, "--label") == [
        "service=shop-db",
        "pydeploy.app=shop",
        "pydeploy.accessory=db",
        "team=data",
    ]
    assert args[-2:] == ["mysql:8.0", "--default-authentication-plugin=mysql_native_password"]
    assert "--memory=1g" in args and "--cap-add=SYS_NICE" in args and "--cap-add=NET_ADMIN" in args


def test_clear_env_is_passed_literally_and_secrets_only_through_the_env_file(
    config: DeployConfig, db: Accessory, tmp_path: Path
) -> None:
    command = accessory.run(config, db, "10.0.0.1")
    args = words(command, tmp_path)
    assert pairs(args, "--env") == ["KAMAL_HOST=10.0.0.1", "MYSQL_DATABASE=shop prod", "NOTE=it's $HOME"]
    assert pairs(args, "--env-file") == [".kamal/apps/shop/env/accessories/db.env"]
    assert "MYSQL_ROOT_PASSWORD" not in command
    env_file = accessory.env_file(db, {"MYSQL_ROOT_PASSWORD": SECRET})
    assert env_file == b"MYSQL_ROOT_PASSWORD=pa$$ word\\nwith 'quotes'\n", "escaped as the app's env files"
    staging = replace(config, destination="staging")
    assert accessory.env_file_path(staging, db) == ".kamal/apps/shop-staging/env/accessories/db.env"


def test_files_and_directories_are_mounted_from_the_accessory_directory_in_home(
    config: DeployConfig, db: Accessory, tmp_path: Path
) -> None:
    args = words(accessory.run(config, db, "10.0.0.1"), tmp_path)
    assert pairs(args, "--volume") == [
        "logs:/var/log/mysql",
        f"{tmp_path}/shop-db/etc/mysql/my.cnf:/etc/mysql/my.cnf",
        f"{tmp_path}/shop-db/init/setup.sql:/init/setup.sql",
        f"{tmp_path}/shop-db/data:/var/lib/mysql",
        "/srv/backups:/backups:ro",
    ]


def test_directories_are_created_and_what_remove_leaves_is_listed(db: Accessory, tmp_path: Path) -> None:
    spaced = replace(db, service="shop db", directories=("my data:/data", f"{tmp_path}/abs:/abs"))
    subprocess.run(["sh", "-c", accessory.make_directories(spaced)], cwd=tmp_path, check=True)
    assert (tmp_path / "shop db" / "my data").is_dir() and (tmp_path / "abs").is_dir()
    kept = subprocess.run(
        ["sh", "-c", accessory.kept_data(spaced)], cwd=tmp_path, capture_output=True, text=True
    )
    assert kept.stdout.splitlines() == [
        f"{tmp_path}/shop db/my data",
        f"{tmp_path}/abs",
        f"{tmp_path}/shop db",
    ]
    assert accessory.make_directories(replace(db, directories=())) is None


def test_a_full_port_a_restart_option_and_another_network_are_kept(
    app: Path, config: DeployConfig, tmp_path: Path
) -> None:
    deploy_yml = app / "config" / "deploy.yml"
    text = deploy_yml.read_text().replace("    port: 3306\n", '    port: "127.0.0.1:3306:3306"\n')
    deploy_yml.write_text(
        text.replace("      memory: 1g\n", "      memory: 1g\n      restart: always\n")
        + "    network: private\n"
    )
    db = load_config(app, version="v1").accessory("db")
    args = words(accessory.run(config, db, "10.0.0.1"), tmp_path)
    assert pairs(args, "--publish") == ["127.0.0.1:3306:3306"]
    assert pairs(args, "--restart") == [] and "--restart=always" in args, "the option replaces the default"
    assert pairs(args, "--network") == ["private"]
    run = words(accessory.exec_new(config, db, "true"), tmp_path)
    assert pairs(run, "--network") == ["private"] and not [arg for arg in run if arg.startswith("--restart")]


def test_exec_in_a_new_container_is_removed_after_and_sees_what_the_accessory_sees(
    config: DeployConfig, db: Accessory, tmp_path: Path
) -> None:
    args = words(accessory.exec_new(config, db, "mysql -e 'select 1'"), tmp_path)
    assert args[:2] == ["run", "--rm"] and "-it" not in args
    assert pairs(args, "--network") == ["pydeploy"]
    assert pairs(args, "--env-file") == [".kamal/apps/shop/env/accessories/db.env"]
    assert len(pairs(args, "--volume")) == 5 and "--memory=1g" in args
    assert args[-4:] == ["mysql:8.0", "mysql", "-e", "select 1"], "the shell reads the command, as Kamal's"
    assert words(accessory.exec_new(config, db, "sh", interactive=True), tmp_path)[:3] == [
        "run",
        "-it",
        "--rm",
    ]
    reuse = words(accessory.exec_existing(db, "ls /", interactive=True), tmp_path)
    assert reuse == ["exec", "-it", "shop-db", "ls", "/"]


def test_logs_default_to_100_lines_unless_narrowed(db: Accessory, tmp_path: Path) -> None:
    assert words(accessory.logs(db), tmp_path) == ["logs", "--timestamps", "--tail", "100", "shop-db"]
    assert words(accessory.logs(db, since="5m", timestamps=False), tmp_path) == [
        "logs",
        "--since",
        "5m",
        "shop-db",
    ]
    assert accessory.logs(db, lines=3, follow=True).endswith("--tail 3 --follow shop-db 2>&1")
    followed = accessory.logs(db, grep="it's", grep_options="-i", follow=True)
    assert followed.endswith("--tail 10 --follow shop-db 2>&1 | grep --line-buffered -i -e 'it'\"'\"'s'")


def test_logs_grep_that_matches_nothing_is_not_a_failure(db: Accessory, tmp_path: Path) -> None:
    def grepped(pattern: str) -> subprocess.CompletedProcess[str]:
        script = f"docker() {{ printf 'GET /orders\\nGET /up\\n'; }}; {accessory.logs(db, grep=pattern)}"
        return subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True)

    assert (grepped("orders").returncode, grepped("orders").stdout) == (0, "GET /orders\n")
    assert (grepped("nothing-like-it").returncode, grepped("nothing-like-it").stdout) == (0, "")


def test_remove_finds_the_container_by_kamals_label_and_keeps_a_shared_image(db: Accessory) -> None:
    assert accessory.remove_container(db) == (
        "docker ps --all --quiet --filter label=service=shop-db"
        " | xargs --no-run-if-empty docker container rm --force"
    )
    assert accessory.remove_image(db) == "docker image rm mysql:8.0", "not forced: the app may use it"


def test_a_proxied_accessory_is_deployed_to_the_proxy_under_its_service_name(
    config: DeployConfig, db: Accessory
) -> None:
    proxied = replace(db, proxy=ProxySettings(hosts=("db.example",), app_port=8080))
    command = accessory.proxy_deploy(config, proxied, "c0ffee")
    assert command.startswith("docker exec pyproxy kamal-proxy deploy shop-db --target=c0ffee:8080 ")
    assert "--host=db.example" in command
    assert accessory.proxy_remove(proxied) == "docker exec pyproxy kamal-proxy remove shop-db"


def test_erb_files_see_the_accessory_env_and_a_vanished_file_is_named(
    app: Path, config: DeployConfig, db: Accessory
) -> None:
    accessories = accessory.Accessories(config, {"MYSQL_ROOT_PASSWORD": SECRET}, Output(str), {}, app)
    uploads = accessories.uploads(db)
    assert [(item.path, item.content, item.mode) for item in uploads] == [
        ("shop-db/etc/mysql/my.cnf", b"[mysqld]\n", "755"),
        ("shop-db/init/setup.sql", b"CREATE DATABASE shop prod;\n", "0640"),
    ]
    (app / "config" / "my.cnf").unlink()
    with pytest.raises(DeployError, match=r"accessories\.db\.files: config/my.cnf is not a file"):
        accessories.uploads(db)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["accessory", "boot", "dbb"], 'No accessory "dbb" (accessories: db)'),
        (["accessory", "remove", "db"], "no terminal to confirm on; add -y (--confirmed)"),
        (["accessory", "exec", "db"], "No command provided"),
        (["accessory", "logs", "all", "-f"], "accessory logs acts on one accessory, not all"),
        (["accessory", "exec", "-i", "db", "sh"], "needs a terminal"),
    ],
)
def test_bad_accessory_commands_are_refused_before_any_host_is_contacted(
    app: Path, args: list[str], message: str
) -> None:
    (app / ".kamal").mkdir()
    (app / ".kamal" / "secrets").write_text("MYSQL_ROOT_PASSWORD=x\n")
    done = subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- on the test bed -----------------------------------------------------------------------------------------

DB_PASSWORD = "pg-s3cret-9d2c"


@pytest.fixture
def bed(testbed: Testbed) -> Testbed:  # noqa: F811
    yield testbed
    testbed.reset()


def project(bed: Testbed, path: Path) -> Path:
    """The test app with two accessories, the test app itself on their ports as stand-ins: `db` on the
    first host (a secret, a data directory, an ERB file, a published port), `redis` on the web role."""
    app = test_pydeploy.project(bed, path)
    deploy_yml = app / "config" / "deploy.yml"
    deploy_yml.write_text(
        deploy_yml.read_text()
        + f"""accessories:
  db:
    image: {bed.app("v1")}
    host: {bed.hosts[0]}
    port: "127.0.0.1:5432:5432"
    env:
      clear:
        PORT: 5432
      secret:
        - POSTGRES_PASSWORD
    files:
      - config/db.conf.erb:/etc/db/db.conf
    directories:
      - data:/data
  redis:
    image: {bed.app("v1")}
    roles:
      - web
    env:
      PORT: 6379
"""
    )
    (app / "config" / "db.conf.erb").write_text("port = <%= ENV['PORT'] %>\n")
    with (app / ".kamal" / "secrets-common").open("a") as secrets:
        secrets.write(f"POSTGRES_PASSWORD={DB_PASSWORD}\n")
    return app


def state(bed: Testbed, host: str, container: str) -> str:
    """`running`, `exited`... or `missing`."""
    found = on_host(bed, host, f"docker inspect --format '{{{{.State.Status}}}}' {container}", check=False)
    return found.strip() or "missing"


def created(bed: Testbed, host: str, container: str) -> str:
    return on_host(bed, host, f"docker inspect --format '{{{{.Created}}}}' {container}").strip()


@pytest.mark.timeout(900)  # the first test-bed test may pay for the bed's bring-up
async def test_setup_boots_the_accessories_before_the_app_which_reaches_them_by_name(
    bed: Testbed, tmp_path: Path
) -> None:
    app = project(bed, tmp_path / "app")
    first, second = bed.hosts

    setup = pydeploy(bed, app, "setup", "--version", "v1", "-P")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert DB_PASSWORD not in setup.stdout + setup.stderr
    assert created(bed, first, "testapp-db") < created(bed, first, "testapp-web-v1"), "booted before the app"
    for host in bed.hosts:
        reached = on_host(bed, host, "docker exec testapp-web-v1 wget -qO- http://testapp-redis:6379/version")
        assert reached.strip() == "v1", "the app reaches redis by name on its own host"
    assert (
        on_host(bed, first, "docker exec testapp-web-v1 wget -qO- http://testapp-db:5432/version") == "v1\n"
    )
    assert state(bed, second, "testapp-db") == "missing", "db is on its host only"
    assert on_host(bed, first, "wget -qO- http://127.0.0.1:5432/version") == "v1\n", "port published"
    assert on_host(bed, first, "docker exec testapp-db cat /etc/db/db.conf") == "port = 5432\n", (
        "ERB rendered"
    )
    env_file = ".kamal/apps/testapp/env/accessories/db.env"
    assert (
        on_host(bed, first, f"stat -c %a {env_file} && cat {env_file}")
        == f"600\nPOSTGRES_PASSWORD={DB_PASSWORD}\n"
    )
    labels = on_host(bed, first, "docker inspect --format '{{json .Config.Labels}}' testapp-db")
    assert '"service":"testapp-db"' in labels and '"pydeploy.accessory":"db"' in labels

    # exec: in the running container (data written to its directory), and in a new one on the network
    wrote = pydeploy(bed, app, "accessory", "exec", "--reuse", "db", "sh -c 'echo precious > /data/row'")
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    fresh = pydeploy(bed, app, "accessory", "exec", "redis", "wget -qO- http://testapp-redis:6379/version")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert fresh.stdout.count("v1") == 2 and f"redis on {second}:" in fresh.stdout, "each host's output"
    left = set(on_host(bed, second, "docker ps --all --format '{{.Names}}'").split())
    assert left == {"pyproxy", "testapp-redis", "testapp-web-v1"}, "the exec containers were removed"

    again = pydeploy(bed, app, "accessory", "boot", "all")
    assert again.returncode == 0 and "Skipping booting db" in again.stdout, again.stdout + again.stderr
    before = created(bed, first, "testapp-db")
    reboot = pydeploy(bed, app, "accessory", "reboot", "db")
    assert reboot.returncode == 0, reboot.stdout + reboot.stderr
    assert created(bed, first, "testapp-db") != before and state(bed, first, "testapp-db") == "running"
    assert on_host(bed, first, "docker exec testapp-db cat /data/row") == "precious\n", "data outlives reboot"

    terminal = Terminal(app, "accessory", "exec", "-i", "--reuse", "db", "sh")
    terminal.send("echo got-$(cat /data/row)-$((40 + 2)); exit 3\n")
    terminal.expect("got-precious-42")
    assert terminal.status() == 3, terminal.seen[-2000:]

    on_host(
        bed, first, "docker exec testapp-db sh -c 'echo query 1 >/proc/1/fd/1; echo vacuum >/proc/1/fd/1'"
    )
    logs = pydeploy(bed, app, "accessory", "logs", "db", "--grep", "query", "-T")
    assert (logs.returncode, logs.stdout) == (0, f"db on {first}:\nquery 1\n"), logs.stdout + logs.stderr
    followed = started(app, "accessory", "logs", "db", "-f", "--grep", "query")
    try:
        assert "query 1" in followed.stdout.readline()
        on_host(bed, first, "docker exec testapp-db sh -c 'echo query 2 >/proc/1/fd/1'")
        assert "query 2" in followed.stdout.readline(), "it streams what is logged after it started"
    finally:
        followed.terminate()
        followed.wait(10)
    details = pydeploy(bed, app, "accessory", "details", "all")
    assert details.returncode == 0, details.stderr
    assert details.stdout.count("testapp-redis") == 2 and "testapp-db" in details.stdout

    removed = pydeploy(bed, app, "accessory", "remove", "db", "-y")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert state(bed, first, "testapp-db") == "missing"
    assert "testapp-db/data" in removed.stdout and first in removed.stdout, "it says which data it leaves"
    kept = on_host(bed, first, "cat testapp-db/data/row; ls .kamal/apps/testapp/env/accessories")
    assert kept == "precious\nredis.env\n", "the data is kept, db's env file is gone"
    assert state(bed, first, "testapp-web-v1") == "running", "the app (same image) keeps running"
    audited = on_host(bed, first, "cat .kamal/testapp-audit.log")
    for line in ("Booted db accessory", "on db accessory", "Removed db accessory (its data kept)"):
        assert line in audited, audited


@pytest.mark.timeout(900)
async def test_an_image_that_cannot_be_pulled_fails_that_accessory_only_and_remove_wants_a_yes(
    bed: Testbed, tmp_path: Path
) -> None:
    app = project(bed, tmp_path / "app")
    first = bed.hosts[0]
    setup = pydeploy(bed, app, "setup", "--version", "v1", "-P")
    assert setup.returncode == 0, setup.stdout + setup.stderr

    broken = f"  search:\n    image: {bed.app_image}:no-such-tag\n    host: {first}\n"
    deploy_yml = app / "config" / "deploy.yml"
    deploy_yml.write_text(deploy_yml.read_text() + broken)
    boot = pydeploy(bed, app, "accessory", "boot", "all")
    assert boot.returncode == 1, boot.stdout + boot.stderr
    assert f"{first}: could not pull {bed.app_image}:no-such-tag for accessory search" in boot.stderr
    assert len(boot.stderr.strip().splitlines()) <= 4, boot.stderr
    for host in bed.hosts:
        assert (
            state(bed, host, "testapp-redis") == "running" and state(bed, host, "testapp-web-v1") == "running"
        )
    assert state(bed, first, "testapp-db") == "running" and state(bed, first, "testapp-search") == "missing"

    unknown = pydeploy(bed, app, "accessory", "boot", "dbb")
    assert unknown.returncode == 2 and 'No accessory "dbb" (accessories: db, redis, search)' in unknown.stderr

    refused = pydeploy(bed, app, "accessory", "remove", "db")  # stdin is not a terminal
    assert refused.returncode == 2 and "-y" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert state(bed, first, "testapp-db") == "running", "nothing removed"


@pytest.mark.timeout(900)
async def test_an_accessory_with_proxy_is_served_by_pyproxy_until_it_is_stopped(
    bed: Testbed, tmp_path: Path
) -> None:
    app = project(bed, tmp_path / "app")
    first = bed.hosts[0]
    deploy_yml = app / "config" / "deploy.yml"
    deploy_yml.write_text(
        deploy_yml.read_text()
        + f"""  admin:
    image: {bed.app("v2")}
    host: {first}
    env:
      PORT: 8080
    proxy:
      host: admin.test
      app_port: 8080
"""
    )
    boot = pydeploy(bed, app, "accessory", "boot", "admin")  # no setup before: it boots the proxy too
    assert boot.returncode == 0, boot.stdout + boot.stderr
    answer = await request(first, "/version", host_header="admin.test")
    assert (answer.status, answer.text) == (200, "v2")

    stop = pydeploy(bed, app, "accessory", "stop", "admin")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert state(bed, first, "testapp-admin") == "exited"
    assert (await request(first, "/version", host_header="admin.test")).status == 404, "no longer routed"
    start = pydeploy(bed, app, "accessory", "start", "admin")
    assert start.returncode == 0, start.stdout + start.stderr
    assert (await request(first, "/version", host_header="admin.test")).text == "v2"


def kamal_and_pydeploy_config(bed: Testbed) -> str:
    """One deploy.yml both read: an accessory with every kind of setting that lands on the host."""
    return f"""service: testapp
image: testapp
servers:
  web:
    hosts:
      - {bed.hosts[0]}
registry:
  server: {bed.registry}
  username: {bed.registry_user}
  password:
    - KAMAL_REGISTRY_PASSWORD
ssh:
  user: {bed.ssh_user}
  keys:
    - {bed.ssh_key}
builder:
  arch: amd64
accessories:
  db:
    image: {bed.app("v1")}
    host: {bed.hosts[0]}
    port: "127.0.0.1:5432:5432"
    cmd: /entrypoint.sh
    env:
      clear:
        PORT: "5432"
      secret:
        - POSTGRES_PASSWORD
    files:
      - config/db.conf.erb:/etc/db/db.conf
      - config/plain.conf:/etc/db/plain.conf
    directories:
      - data:/data
    volumes:
      - dbsocket:/run/db
    options:
      memory: 256m
    labels:
      team: data
"""


def landed(bed: Testbed, host: str) -> dict[str, object]:
    """What an accessory boot put on the host, in the terms both tools share (not the network's name)."""
    inspect = "docker inspect testapp-db --format '{{json .}}'"
    container = json.loads(on_host(bed, host, inspect))
    config, host_config = container["Config"], container["HostConfig"]
    files = "cd testapp-db && find . -type f | sort | xargs -I{} sh -c 'stat -c \"%n %a\" {}; cat {}'"
    env_file = ".kamal/apps/testapp/env/accessories/db.env"
    return {
        "name": container["Name"],
        "labels": {key: value for key, value in config["Labels"].items() if not key.startswith("pydeploy.")},
        "env": sorted(config["Env"]),
        "cmd": config["Cmd"],
        "mounts": sorted((mount["Source"], mount["Destination"]) for mount in container["Mounts"]),
        "ports": host_config["PortBindings"],
        "restart": host_config["RestartPolicy"]["Name"],
        "memory": host_config["Memory"],
        "log": host_config["LogConfig"],
        "files": on_host(bed, host, files),
        "env file": on_host(bed, host, f"stat -c %a {env_file} && cat {env_file}"),
    }


@pytest.mark.timeout(900)
@pytest.mark.skipif(kamal_unavailable_reason() is not None, reason=kamal_unavailable_reason() or "")
def test_an_accessory_lands_on_the_host_as_kamal_boots_it(bed: Testbed, tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "config").mkdir(parents=True)
    (app / "config" / "deploy.yml").write_text(kamal_and_pydeploy_config(bed))
    (app / "config" / "db.conf.erb").write_text("port = <%= ENV['PORT'] %>\n")
    (app / "config" / "plain.conf").write_text("plain\n")
    (app / ".kamal").mkdir()
    (app / ".kamal" / "secrets").write_text(
        f"KAMAL_REGISTRY_PASSWORD={bed.registry_password}\nPOSTGRES_PASSWORD={DB_PASSWORD}\n"
    )
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "app"]):
        subprocess.run(["git", *command], cwd=app, check=True, capture_output=True)
    host = bed.hosts[0]

    Kamal(app, kamal_home(bed, tmp_path / "home"))("accessory", "boot", "db")
    by_kamal = landed(bed, host)
    assert on_host(bed, host, "docker inspect testapp-db --format '{{.HostConfig.NetworkMode}}'") == "kamal\n"
    on_host(bed, host, "docker rm --force testapp-db && rm -rf testapp-db .kamal/apps")

    booted = pydeploy(bed, app, "accessory", "boot", "db")
    assert booted.returncode == 0, booted.stdout + booted.stderr
    by_pydeploy = landed(bed, host)
    assert (
        on_host(bed, host, "docker inspect testapp-db --format '{{.HostConfig.NetworkMode}}'") == "pydeploy\n"
    )
    assert by_pydeploy == by_kamal
