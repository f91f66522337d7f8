"""The command line as an operator meets it: bad flags, progress output, env-configured run."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from tests.conftest import PYPROXY, ProxyProcess, proxy_env


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run([*PYPROXY, *args], capture_output=True, text=True, env=env, timeout=30)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy", "web", "--target=a:1", "--frobnicate"], "pyproxy deploy: unknown flag: --frobnicate"),
        (["deploy", "web", "--targ=a:1"], "pyproxy deploy: unknown flag: --targ"),
        (["deploy", "web"], "pyproxy deploy: required flag --target not set"),
        (
            ["deploy", "web", "--target=a:1", "--deploy-timeout=10x"],
            'invalid duration "10x" for --deploy-timeout',
        ),
        (["deploy", "web", "--target=a:1", "--force=maybe"], 'invalid boolean "maybe" for --force'),
        (["run", "--http-port=eighty"], 'invalid integer "eighty" for --http-port'),
        (["run", "--tls"], "pyproxy run: unknown flag: --tls"),
        (["deploy", "web", "--target=a:1", "--tls-certificate-path=c.pem"], "must be given together"),
        (["launch"], "pyproxy: unknown command: launch"),
        (
            ["deploy", "web", "--target=a:1", "--max-request-body=10"],
            "pyproxy deploy: max-request-body can only be set when request buffering is enabled",
        ),
        (
            ["deploy", "web", "--target=a:1", "--max-response-body=10"],
            "pyproxy deploy: max-response-body can only be set when response buffering is enabled",
        ),
        (["deploy", "web", "--target=a:1", "--buffer-memory=-1"], "must not be negative"),
        (["pause"], "pyproxy pause: the following arguments are required: service"),
        (["stop", "web", "--max-pause=1s"], "pyproxy stop: unknown flag: --max-pause"),
        (["rollout", "launch", "web"], "pyproxy rollout: unknown command: launch"),
        (["rollout", "deploy", "web"], "pyproxy rollout deploy: required flag --target not set"),
        (["rollout", "set", "web"], "at least one of the flags in the group [percent list] is required"),
        (["rollout", "set", "web", "--percent=200"], "must be between 0 and 100"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(args, message):
    status, stdout, stderr = run_cli(*args)
    assert status == 2
    assert stdout == ""
    assert stderr.count("\n") == 1
    assert message in stderr


def test_help_lists_commands_and_flags():
    status, stdout, _ = run_cli("--help")
    assert status == 0
    for command in ("run", "deploy", "remove", "list"):
        assert command in stdout
    status, stdout, _ = run_cli("deploy", "--help")
    assert status == 0
    assert "--drain-timeout" in stdout
    assert "(default 30s)" in stdout


async def test_a_command_sent_while_run_is_starting_waits_for_it(tmp_path):
    """As Kamal does: the proxy's container is started and a deploy follows before it listens."""
    env = proxy_env(tmp_path)
    listing = await asyncio.create_subprocess_exec(
        *PYPROXY, "list", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    running = ProxyProcess(tmp_path, env, ["--workers=1"])
    await running.start()
    try:
        _, stderr = await asyncio.wait_for(listing.communicate(), 10)
        assert listing.returncode == 0, stderr
    finally:
        await running.stop()


def test_cli_without_a_running_proxy_says_so(tmp_path):
    status, _, stderr = run_cli("list", env=proxy_env(tmp_path))
    assert status == 1
    assert "cannot reach pyproxy" in stderr
    assert str(tmp_path / "pyproxy.sock") in stderr


async def test_deploy_prints_its_progress(proxy, upstreams):
    blue, green = upstreams
    assert (await proxy.deploy("web", blue.address)).status == 0
    result = await proxy.deploy("web", green.address)
    assert result.status == 0
    assert result.stdout.splitlines() == [
        f"Waiting for {green.address} to become healthy (timeout 30s)",
        "Healthy",
        "Switched traffic to the new target",
        "Draining 0 in-flight request(s) from the old target (timeout 30s)",
        "Drained",
        "Deployed",
    ]


async def test_kamal_style_invocation_is_accepted(proxy, upstreams):
    blue, _ = upstreams
    result = await proxy.cli(
        "deploy",
        "web",
        f"--target={blue.address}",
        "--host=a.test",
        "--host=b.test,c.test",
        "--deploy-timeout=30s",
        "--drain-timeout=30s",
        "--target-timeout=30s",
        "--health-check-path=/up",
        "--health-check-interval=100ms",
        "--health-check-timeout=5s",
        "--forward-headers=true",
        "--strip-path-prefix=false",
    )
    assert result.status == 0, result.stderr
    listing = await proxy.cli("ls")
    assert "a.test,b.test,c.test" in listing.stdout


async def test_run_reads_ports_from_the_environment(tmp_path):
    env = proxy_env(tmp_path)
    env["HTTP_PORT"] = "1"  # the prefixed variable must win over this one
    env["PYPROXY_HTTP_PORT"] = "0"
    process = await asyncio.create_subprocess_exec(
        *PYPROXY, "run", "--bind=127.0.0.1", "--https-port=0", env=env, stdout=asyncio.subprocess.PIPE
    )
    line = await asyncio.wait_for(process.stdout.readline(), 10)
    while b"Server started" not in line and b"Could not start" not in line and line:
        line = await asyncio.wait_for(process.stdout.readline(), 10)
    process.terminate()
    assert await process.wait() == 0
    started = json.loads(line)
    assert started["msg"] == "Server started"
    assert started["http_port"] not in (1, 80)


def test_socket_path_follows_the_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYPROXY_SOCKET", "XDG_RUNTIME_DIR")}
    code = "from proxy.paths import socket_path; print(socket_path())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("/pyproxy.sock")
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(tmp_path / "pyproxy.sock")
    env["PYPROXY_SOCKET"] = str(tmp_path / "other.sock")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(tmp_path / "other.sock")


async def test_metrics_port_serves_request_counts(make_proxy, upstreams):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    proxy = await make_proxy(f"--metrics-port={metrics_port}")
    assert (await proxy.deploy("web", upstreams[0].address)).status == 0
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(proxy.url) as response:
                assert response.status == 200
        async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = await response.text()
    # kamal-proxy's names and labels, so its dashboards keep working; each request counted once.
    assert 'kamal_proxy_http_requests_total{method="GET",service="web",status="200"} 3.0' in text
    assert "kamal_proxy_http_request_duration_seconds_bucket" in text
    assert "pyproxy_http_requests_total" not in text


async def test_debug_logs_successful_health_checks(make_proxy, upstreams):
    quiet = await make_proxy()
    assert (await quiet.deploy("web", upstreams[0].address)).status == 0
    await quiet.stop()
    assert not quiet.logs("Healthcheck succeeded")
    verbose = await make_proxy("--debug")
    assert (await verbose.deploy("web", upstreams[1].address)).status == 0
    line = await verbose.wait_for_log("Healthcheck succeeded", target=upstreams[1].address)
    assert line["level"] == "DEBUG"


def test_kamal_proxy_is_the_same_program_with_kamal_proxys_defaults(tmp_path):
    """Invoked as `kamal-proxy` (Kamal's name for it), the socket and state are where kamal-proxy keeps them,
    and its KAMAL_PROXY_ variables are read."""
    kamal_proxy = os.path.join(os.path.dirname(sys.executable), "kamal-proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYPROXY_", "KAMAL_PROXY_"))}
    env.pop("XDG_RUNTIME_DIR", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    code = (
        "import sys; sys.argv[0] = sys.argv[1]; from proxy.paths import socket_path, state_path; "
        "print(socket_path()); print(state_path())"
    )
    for name, socket_name, state in (
        ("kamal-proxy", "kamal-proxy.sock", "kamal-proxy/kamal-proxy.state"),
        ("pyproxy", "pyproxy.sock", "pyproxy/pyproxy.state"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code, f"/usr/local/bin/{name}"], capture_output=True, text=True, env=env
        )
        sock, state_file = out.stdout.split()
        assert sock.endswith("/" + socket_name)
        assert state_file == str(tmp_path / state)
    done = subprocess.run([kamal_proxy, "deploy", "web"], capture_output=True, text=True, env=env, timeout=30)
    assert (done.returncode, done.stderr.strip()) == (2, "kamal-proxy deploy: required flag --target not set")
    env["KAMAL_PROXY_SOCKET"] = str(tmp_path / "k.sock")
    done = subprocess.run([kamal_proxy, "list"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1 and str(tmp_path / "k.sock") in done.stderr
    assert "kamal-proxy run" in done.stderr


@pytest.mark.parametrize(
    ("command", "answer", "said"),
    [
        (["list"], b"", "closed the connection without answering (did it stop?)"),
        (["list"], b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "could not be read"),
        (["list"], b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot", "could not be read"),
        (
            ["deploy", "web", "--target=127.0.0.1:9"],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "could not be read",
        ),
        (
            ["deploy", "web", "--target=127.0.0.1:9"],
            b'HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{"event": "healthy"}\n{"eve',
            "the deploy ended without a result",
        ),
    ],
)
async def test_an_answer_cut_short_or_garbled_is_one_error_line(tmp_path, command, answer, said):
    """What a killed pyproxy, or another server on the socket, sends: exit 1 and one line, no traceback."""
    path = tmp_path / "other.sock"

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer_once, path=str(path))
    async with server:
        result = await asyncio.create_subprocess_exec(
            *PYPROXY,
            *command,
            env={**os.environ, "PYPROXY_SOCKET": str(path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(result.communicate(), 10)
    assert result.returncode == 1
    assert stderr.decode().startswith("Error: ") and said in stderr.decode(), stderr.decode()
    assert stderr.decode().count("\n") == 1, stderr.decode()
