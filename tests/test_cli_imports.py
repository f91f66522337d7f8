"""Admin commands load only the standard library, and their stdlib client still streams a deploy's progress.

Kamal runs one admin command per role per host per deploy, so each must start in milliseconds: none of the
server's libraries may be imported on the way to the socket (aiohttp alone took a quarter of a second).
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.conftest import PYPROXY, CommandResult, ProxyProcess, Upstream

SERVER_LIBRARIES = (
    "aiohttp",
    "acme",
    "josepy",
    "requests",
    "cryptography",
    "h2",
    "httptools",
    "uvloop",
    "prometheus_client",
    "yaml",
    "asyncio",
)


async def run_importing(proxy: ProxyProcess, *args: str) -> tuple[CommandResult, set[str]]:
    """Run `pyproxy <args>` in a fresh interpreter; its result and the top-level packages it imported
    (from `-X importtime`, whose lines go to stderr and are taken out of it)."""
    env = {**proxy.env, "PYTHONPROFILEIMPORTTIME": "1"}
    process = await asyncio.create_subprocess_exec(
        *PYPROXY, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    imported: set[str] = set()
    errors = []
    for line in stderr.decode().splitlines():
        if line.startswith("import time:"):
            imported.add(line.rpartition("|")[2].strip().partition(".")[0])
        else:
            errors.append(line)
    result = CommandResult(process.returncode, stdout.decode(), "".join(f"{e}\n" for e in errors))
    return result, imported


ADMIN_COMMANDS = [
    (("deploy", "web", "--target={blue}", "--health-check-interval=100ms"), 0),
    (("list",), 0),
    (("ls",), 0),
    (("pause", "web"), 0),
    (("resume", "web"), 0),
    (("stop", "web", "--message=Back soon"), 0),
    (("resume", "web"), 0),
    (("rollout", "deploy", "web", "--target={green}"), 0),
    (("rollout", "set", "web", "--percent=10"), 0),
    (("rollout", "stop", "web"), 0),
    (("remove", "web"), 0),
    (("rm", "web"), 1),  # already removed: the server's refusal
    (("--help",), 0),
    (("deploy", "--help"), 0),
    (("rollout", "--help"), 0),
    (("deploy", "web", "--frobnicate"), 2),
    (("launch",), 2),
    (("run", "--help"), 0),
    (("run", "--http-port=eighty"), 2),
]


async def test_admin_commands_import_no_server_library(proxy: ProxyProcess, upstreams: list[Upstream]):
    blue, green = upstreams
    for args, status in ADMIN_COMMANDS:
        args = tuple(arg.format(blue=blue.address, green=green.address) for arg in args)
        result, imported = await run_importing(proxy, *args)
        assert result.status == status, (args, result.stderr)
        assert not imported & set(SERVER_LIBRARIES), f"{args} imported {imported & set(SERVER_LIBRARIES)}"
        assert "proxy" in imported, "the import log must be read (else this test proves nothing)"


async def start_deploy(proxy: ProxyProcess, target: Upstream, *flags: str) -> asyncio.subprocess.Process:
    """`pyproxy deploy web` to `target`, running; its stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        *PYPROXY,
        "deploy",
        "web",
        f"--target={target.address}",
        *flags,
        env=proxy.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_deploy_progress_is_printed_while_the_deploy_waits(proxy: ProxyProcess, upstreams):
    """Each progress line reaches the operator when it happens, not when the deploy returns."""
    blue, _ = upstreams
    blue.healthy = False
    process = await start_deploy(proxy, blue, "--health-check-interval=100ms")
    first = await asyncio.wait_for(process.stdout.readline(), 10)
    assert first.decode() == f"Waiting for {blue.address} to become healthy (timeout 30s)\n"
    blue.healthy = True
    rest = await asyncio.wait_for(process.stdout.read(), 10)
    assert await process.wait() == 0
    assert rest.decode().splitlines() == ["Healthy", "Switched traffic to the new target", "Deployed"]


async def test_deploy_cut_off_by_a_dying_proxy_says_so(make_proxy, upstreams):
    proxy = await make_proxy()
    blue, _ = upstreams
    blue.healthy = False
    process = await start_deploy(proxy, blue)
    assert b"Waiting for" in await asyncio.wait_for(process.stdout.readline(), 10)
    await proxy.stop(signal.SIGKILL)
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 1
    assert stderr.decode() == "Error: the deploy ended without a result (did pyproxy stop?)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("deploy", "web", "--target=not a target"), "Error: "),
        (("pause", "nothing"), "Error: service not found: nothing"),
    ],
)
async def test_refusals_are_one_error_line(proxy: ProxyProcess, args, message):
    result = await proxy.cli(*args)
    assert result.status == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
