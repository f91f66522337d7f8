"""pydeploy's everyday commands on the test bed: `app exec -i` on a real terminal, logs, maintenance,
the deploy lock with `--lock-wait`, prune, remove, audit and `server exec`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.test_pydeploy import HOST, ROOT, bed, on_host, project, pydeploy  # noqa: F401  (bed: fixture)
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(600)


class Terminal:
    """pydeploy run on a pseudo-terminal of 40 rows and 123 columns, as a person at a terminal runs it."""

    def __init__(self, app: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYDEPLOY_KNOWN_HOSTS": str(app / "known_hosts")}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its stdin, stdout and controlling terminal
            os.chdir(app)
            os.execve(sys.executable, [sys.executable, "-m", "deployer", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 123, 0, 0))
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never showed; the terminal shows:\n{self.seen[-2000:]}"
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child ended: nothing more will come
                    assert text in self.seen, f"{text!r} never showed:\n{self.seen[-2000:]}"

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def status(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):  # the child ended
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"pydeploy did not end; the terminal shows:\n{self.seen[-2000:]}")


def started(app: Path, *args: str) -> subprocess.Popen[str]:
    """pydeploy running in the background, its output (stdout and stderr) read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "deployer", *args],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYDEPLOY_KNOWN_HOSTS": str(app / "known_hosts")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def answer(host: str, path: str = "/version") -> tuple[int, str]:
    """Status and body of GET `path` through the host's proxy, for app.test."""
    reader, writer = await asyncio.open_connection(host, 80)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def set_up(the_bed: Testbed, app: Path) -> None:
    done = pydeploy(the_bed, app, "setup", "--version", "v1", "-P")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_exec_on_a_terminal_logs_and_the_audit_log(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    set_up(bed, app)

    terminal = Terminal(app, "app", "exec", "-i", "--reuse", "sh")
    terminal.expect("built-in shell")  # typed before docker sized the container's terminal, stty sees 0x0
    terminal.send("echo in-$(cat /www/version)-$((40 + 2))\n")
    terminal.expect("in-v1-42")
    terminal.send("stty size\n")
    terminal.expect("40 123", timeout=10)  # the window size reached the container's terminal
    terminal.send("sleep 30; echo not-interrupted\n")
    time.sleep(1)  # let sleep start: Ctrl-C before it would only reach the shell's prompt
    terminal.send("\x03")
    terminal.send("echo after-$((2 + 2))\n")
    terminal.expect("after-4", timeout=10)  # Ctrl-C ended the remote sleep, not pydeploy
    assert "\nnot-interrupted" not in terminal.seen, "(the typed line echoes it, after `echo `)"
    terminal.send("exit 3\n")
    assert terminal.status() == 3, terminal.seen[-2000:]

    fresh = Terminal(app, "app", "exec", "-i", "sh", "-c", "'hostname; exit 4'")
    assert fresh.status() == 4, fresh.seen[-2000:]
    assert "testapp-web-exec-v1-" not in on_host(bed, bed.hosts[0], "docker ps --all --format '{{.Names}}'")

    no_terminal = pydeploy(bed, app, "app", "exec", "-i", "--reuse", "sh")
    assert no_terminal.returncode == 2 and "needs a terminal" in no_terminal.stderr

    new_container = pydeploy(bed, app, "app", "exec", "-e", "EXTRA=yes", "env")
    assert new_container.returncode == 0, new_container.stderr
    assert new_container.stdout.count("EXTRA=yes") == len(bed.hosts), "on every host, with -e"
    assert "HOSTNAME=" in new_container.stdout and "DB_PASSWORD=[REDACTED]" in new_container.stdout
    primary = pydeploy(bed, app, "-p", "app", "exec", "--reuse", "cat /www/version")
    assert primary.returncode == 0 and primary.stdout.count("v1") == 1, primary.stdout

    for host in bed.hosts:
        on_host(bed, host, "docker exec testapp-web-v1 sh -c 'echo GET /orders 200 >/proc/1/fd/1'")
        on_host(bed, host, "docker exec testapp-web-v1 sh -c 'echo GET /health 500 >/proc/1/fd/1'")
    grepped = pydeploy(bed, app, "app", "logs", "--grep", "/orders", "-T")
    assert grepped.returncode == 0, grepped.stderr
    assert grepped.stdout.count("GET /orders 200") == len(bed.hosts) and "/health" not in grepped.stdout
    nothing = pydeploy(bed, app, "app", "logs", "--grep", "no-such-line")
    assert nothing.returncode == 0 and "(nothing)" in nothing.stdout

    with (app / "config" / "deploy.yml").open("a") as config:
        config.write("  tail: app logs -f\n")  # under `aliases:`, the file's last key
    followed = started(app, "tail", "--grep", "orders")
    try:
        assert "GET /orders 200" in followed.stdout.readline()
        on_host(bed, bed.hosts[0], "docker exec testapp-web-v1 sh -c 'echo GET /orders 201 >/proc/1/fd/1'")
        assert "GET /orders 201" in followed.stdout.readline(), "new lines stream as they are logged"
    finally:
        followed.terminate()
        followed.wait(10)

    served = pydeploy(bed, app, "server", "exec", "cat /etc/hostname; docker ps --format '{{.Names}}' | sort")
    assert served.returncode == 0 and served.stdout.count("testapp-web-v1") == len(bed.hosts)

    audit = pydeploy(bed, app, "audit")
    assert audit.returncode == 0, audit.stderr
    assert "Deployed app version v1 (setup)" in audit.stdout
    assert "Executed cmd 'sh' on app version v1" in audit.stdout
    assert "Executed cmd 'env' on app version v1" in audit.stdout
    assert "] [web] Executed cmd" in audit.stdout, "Kamal's tags: time, performer, role"


async def test_maintenance_serves_the_message_until_live(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    set_up(bed, app)
    stopped = pydeploy(bed, app, "app", "maintenance", "--message", "Back at five", "--drain-timeout", "2")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for host in bed.hosts:
        status, body = await answer(host)
        assert status == 503 and "Back at five" in body, body
    resumed = pydeploy(bed, app, "app", "live")
    assert resumed.returncode == 0, resumed.stderr
    for host in bed.hosts:
        assert await answer(host) == (200, "v1\n")
    assert "Maintenance mode: Back at five" in pydeploy(bed, app, "audit").stdout


async def test_app_stop_leaves_the_proxy_and_start_brings_the_deployed_version_back(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = project(bed, tmp_path / "app")
    set_up(bed, app)
    stopped = pydeploy(bed, app, "app", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for host in bed.hosts:
        assert (await answer(host))[0] == 404, "the route went with the container: no 502 for a stopped app"
        running = on_host(bed, host, "docker ps --filter label=service=testapp --format '{{.Names}}'")
        assert not running.strip(), running
    started_again = pydeploy(bed, app, "app", "start")  # no --version: the one each host switched to
    assert started_again.returncode == 0, started_again.stdout + started_again.stderr
    for host in bed.hosts:
        assert await answer(host) == (200, "v1\n")
    audit = pydeploy(bed, app, "audit").stdout
    assert "Stopped app" in audit and "Started app version v1" in audit, audit


def hold_lock_as_a_deploy(the_bed: Testbed) -> None:
    """The deploy lock as a running deploy (Kamal's or ours) holds it."""
    details = "Locked by: ci at 2026-12-02T08:00:00Z\nVersion: v9\nMessage: Automatic deploy lock\n"
    encoded = base64.b64encode(details.encode()).decode()
    on_host(
        the_bed,
        the_bed.hosts[0],
        f"mkdir -p .kamal/lock-testapp && echo {encoded} > .kamal/lock-testapp/details",
    )


async def test_the_lock_refuses_prune_and_lock_wait(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    assert pydeploy(bed, app, "lock", "acquire", "-m", "restoring the database").returncode == 0
    refused = pydeploy(bed, app, "prune", "all")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Message: restoring the database" in refused.stderr and "Locked by:" in refused.stderr

    began = time.monotonic()
    by_hand = pydeploy(bed, app, "--lock-wait", "prune", "all")
    assert by_hand.returncode == 1 and "taken by hand, not waiting" in by_hand.stderr, by_hand.stderr
    assert time.monotonic() - began < 30, "a lock taken by hand is not waited for (900 s by default)"
    assert pydeploy(bed, app, "lock", "release").returncode == 0

    hold_lock_as_a_deploy(bed)
    refused = pydeploy(bed, app, "prune", "images")
    assert refused.returncode == 1 and "Message: Automatic deploy lock" in refused.stderr, refused.stderr
    began = time.monotonic()
    timed_out = pydeploy(
        bed, app, "--lock-wait", "--lock-wait-timeout", "3", "--lock-wait-interval", "1", "prune", "all"
    )
    assert timed_out.returncode == 1, timed_out.stdout + timed_out.stderr
    assert "Timed out after 3s waiting for the deploy lock" in timed_out.stderr
    assert "Locked by: ci" in timed_out.stderr and "Version: v9" in timed_out.stderr, "the holder is named"
    assert time.monotonic() - began >= 3

    # A pydeploy command in a hook of the deploy that holds the lock (KAMAL_LOCK=true) runs under it.
    nested = pydeploy(bed, app, "prune", "images", KAMAL_LOCK="true")
    assert nested.returncode == 0, nested.stdout + nested.stderr
    assert "Version: v9" in pydeploy(bed, app, "lock", "status").stdout, "the holder's lock is left alone"
    on_host(bed, bed.hosts[0], "rm -rf .kamal/lock-testapp")
    leftover = pydeploy(bed, app, "prune", "images", KAMAL_LOCK="true")
    assert leftover.returncode == 1 and "unset KAMAL_LOCK" in leftover.stderr, "no lock: not one to trust"

    # A lock seen between its mkdir and its details (being taken): looked at again, not read as by hand.
    on_host(bed, bed.hosts[0], "mkdir -p .kamal/lock-testapp")
    waiting = started(app, "prune", "all", "--lock-wait", "--lock-wait-interval", "0.5")
    shown = ""
    for awaited in ("has no details yet", "retrying"):
        while awaited not in shown:
            line = waiting.stdout.readline()
            assert line, f"pydeploy ended without waiting: {shown}"
            shown += line
        if awaited == "has no details yet":
            hold_lock_as_a_deploy(bed)  # the deploy that took it describes it
    on_host(bed, bed.hosts[0], "rm -rf .kamal/lock-testapp")
    assert waiting.wait(60) == 0, shown + waiting.stdout.read()
    assert "Pruned containers and images" in pydeploy(bed, app, "audit").stdout


async def test_prune_is_refused_while_a_deploy_runs(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    set_up(bed, app)
    # v3 never becomes healthy: its deploy holds the lock for the whole deploy_timeout.
    deploy = started(app, "deploy", "--version", "v3", "-P")
    try:
        deadline = time.monotonic() + 60
        while "Deploying v3" not in pydeploy(bed, app, "lock", "status").stdout:
            assert time.monotonic() < deadline and deploy.poll() is None, "the deploy never took the lock"
        refused = pydeploy(bed, app, "prune", "all")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is held" in refused.stderr and "Deploying v3" in refused.stderr, refused.stderr
        assert "Locked by:" in refused.stderr and "Version: v3" in refused.stderr
    finally:
        assert deploy.wait(120) == 1, "v3 is refused"
    for host in bed.hosts:
        assert "testapp-web-v1" in on_host(bed, host, "docker ps --all --format '{{.Names}}'"), (
            "nothing pruned"
        )


async def test_prune_keeps_a_rollback_and_remove_all(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    app = project(bed, tmp_path / "app")
    set_up(bed, app)
    for version in ("v2", "v1"):
        deployed = pydeploy(bed, app, "deploy", "--version", version, "-P")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    pruned = pydeploy(bed, app, "prune", "containers", "--retain", "1")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    for host in bed.hosts:
        names = on_host(bed, host, "docker ps --all --filter label=service=testapp --format '{{.Names}}'")
        assert sorted(names.split()) == ["testapp-web-v1", "testapp-web-v2"], "running + 1 stopped kept"

    details = pydeploy(bed, app, "details")
    assert details.returncode == 0 and details.stdout.count("testapp-web-v1") >= len(bed.hosts), (
        details.stdout
    )

    removed = pydeploy(bed, app, "remove", "-y")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for host in bed.hosts:
        assert on_host(bed, host, "docker ps --all --format '{{.Names}}'") == "", "no app or proxy container"
        assert "pyproxy-state" not in on_host(bed, host, "docker volume ls -q").split()
        assert "pydeploy" not in on_host(bed, host, "docker network ls --format '{{.Name}}'").split()
        images = on_host(bed, host, "docker images --format '{{.Repository}}:{{.Tag}}'").split()
        assert bed.proxy_image not in images and not [image for image in images if "/testapp:" in image]
        left = on_host(bed, host, "ls -A .kamal .kamal/apps")
        assert "testapp-versions" not in left and "proxy" not in left, left
        assert "testapp-audit.log" in left, "the audit log stays: it says who removed the app"
