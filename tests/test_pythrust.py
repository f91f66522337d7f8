"""pythrust wrapping a real app process: PORT, proxying, 502 while booting, signals and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path

import pytest

from tests.conftest import raw_request
from tests.h2client import H2Client
from tests.pebble import free_port
from thruster.config import ThrusterConfig, load

APP = Path(__file__).parent / "apps" / "port_app.py"
ROOT = Path(__file__).resolve().parent.parent


async def test_app_gets_port_and_is_proxied(start_pythrust):
    thrust = await start_pythrust()
    await thrust.wait_for_line(rf"app listening on {thrust.target_port}")
    response = await raw_request(thrust.http_port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(f"hello on {thrust.target_port}".encode())
    started = json.loads(next(line for line in thrust.lines if '"Server started"' in line))
    assert started["http"] == f":{thrust.http_port}"


async def test_booting_app_gets_the_bad_gateway_page(start_pythrust, tmp_path):
    (tmp_path / "502.html").write_text("<h1>starting up</h1>")
    thrust = await start_pythrust(START_DELAY="30")
    await thrust.wait_for_line('"Server started"')
    response = await raw_request(thrust.http_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 502")
    assert response.endswith(b"<h1>starting up</h1>")


async def test_sigterm_reaches_the_app_and_its_exit_status_is_pythrusts(start_pythrust):
    thrust = await start_pythrust(EXIT_ON_TERM="7")
    await thrust.wait_for_line("app listening")
    thrust.process.send_signal(signal.SIGTERM)
    assert await thrust.exit_status() == 7
    assert any('"Relaying signal to upstream process"' in line for line in thrust.lines)


async def test_an_app_that_exits_ends_pythrust_with_its_status(start_pythrust):
    thrust = await start_pythrust()
    await thrust.wait_for_line("app listening")
    await raw_request(thrust.http_port, b"GET /exit?code=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert await thrust.exit_status() == 3


async def test_a_killed_app_gives_128_plus_the_signal(start_pythrust):
    thrust = await start_pythrust()
    found = await thrust.wait_for_line(r"app listening on \d+ pid (\d+)")
    os.kill(int(found.group(1)), signal.SIGKILL)
    assert await thrust.exit_status() == 128 + signal.SIGKILL


async def test_missing_command_and_unstartable_command(start_pythrust):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "thruster", env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 1 and out.decode() == "ERROR: missing upstream command\n"
    thrust = await start_pythrust("/nonexistent/app")
    assert await thrust.exit_status() == 1
    assert any('"Failed to start wrapped process"' in line for line in thrust.lines)


async def test_a_taken_port_stops_pythrust_before_the_app_starts(start_pythrust):
    blocker = await asyncio.start_server(lambda r, w: None, "0.0.0.0", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        thrust = await start_pythrust(HTTP_PORT=str(port))
        assert await thrust.exit_status() == 1
        assert not any("app listening" in line for line in thrust.lines)
    finally:
        blocker.close()


def test_environment_follows_thrusters_prefix_rules():
    env = {
        "TARGET_PORT": "4000",
        "THRUSTER_HTTP_PORT": "8080",
        "HTTP_PORT": "9090",
        "PYTHRUST_HTTP_IDLE_TIMEOUT": "10",
        "THRUSTER_HTTP_IDLE_TIMEOUT": "20",
        "HTTP_READ_TIMEOUT": "lots",  # does not parse: the default, silently
        "THRUSTER_DEBUG": "",  # set but empty: wins over DEBUG, and is no boolean
        "DEBUG": "true",
        "TLS_DOMAIN": " a.example , ,b.example",
    }
    config = load(env)
    assert (config.target_port, config.http_port, config.http_idle_timeout) == (4000, 8080, 10)
    assert config.http_read_timeout == ThrusterConfig.http_read_timeout
    assert config.debug is False
    assert config.tls_domains == ("a.example", "b.example")
    assert config.forward_headers is False, "the TLS edge does not trust client X-Forwarded-* by default"
    assert load({}).forward_headers is True


async def test_request_bodies_over_max_request_body_get_413(start_pythrust):
    thrust = await start_pythrust(MAX_REQUEST_BODY="1000")
    await thrust.wait_for_line("app listening")
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    small = await raw_request(thrust.http_port, head + b"x" * 10)
    assert small.startswith(b"HTTP/1.1 200") and small.endswith(b"got 10 bytes")
    declared = await raw_request(
        thrust.http_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    )
    assert declared.startswith(b"HTTP/1.1 413")
    chunk = b"600\r\n" + b"x" * 0x600 + b"\r\n"
    chunked = await raw_request(
        thrust.http_port, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
    )
    assert chunked.startswith(b"HTTP/1.1 413"), "a chunked body is counted as it arrives"


async def test_http2_bodies_over_max_request_body_get_413(start_pythrust):
    thrust = await start_pythrust(MAX_REQUEST_BODY="1000", H2C_ENABLED="true")
    await thrust.wait_for_line("app listening")
    client = await H2Client.connect(thrust.http_port, "a", None)
    try:
        declared = client.start("/", method="POST", headers=[("content-length", "2000")], end=False)
        assert (await client.response(declared)).status == 413
        undeclared = client.start("/", method="POST", end=False)
        for _ in range(2):
            client.conn.send_data(undeclared, b"x" * 800)
        client.flush()
        await asyncio.wait_for(client.streams[undeclared].done.wait(), 10)
        assert client.streams[undeclared].status == 413
    finally:
        await client.close()


async def test_tls_domain_gets_a_certificate_from_the_acme_ca_and_serves_http2(
    start_pythrust, pebble, tmp_path
):
    https_port = free_port()
    thrust = await start_pythrust(
        TLS_DOMAIN="app.test",
        HTTP_PORT=str(pebble.http_port),  # where pebble validates HTTP-01
        HTTPS_PORT=str(https_port),
        ACME_DIRECTORY=pebble.directory_url,
        STORAGE_PATH=str(tmp_path / "certs"),
        REQUESTS_CA_BUNDLE=pebble.ca_bundle,
    )
    await thrust.wait_for_line(r'"Certificate issued".*app\.test', timeout=60)
    roots = pebble.roots_pem().decode()
    context = ssl.create_default_context(cadata=roots)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", https_port, ssl=context, server_hostname="app.test"
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    response = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    hello = f"hello on {thrust.target_port}".encode()
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(hello)
    client = await H2Client.connect(https_port, "app.test", ssl.create_default_context(cadata=roots))
    try:
        assert (await client.get("/")).body == hello
    finally:
        await client.close()

    redirect = await raw_request(pebble.http_port, b"GET /page?q=1 HTTP/1.1\r\nHost: APP.test:80\r\n\r\n")
    assert redirect.startswith(b"HTTP/1.1 301") and b"\r\nLocation: https://app.test/page?q=1\r\n" in redirect
    other = await raw_request(pebble.http_port, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert other.startswith(b"HTTP/1.1 421"), "only the configured domains are redirected"
    challenge = await raw_request(
        pebble.http_port, b"GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: app.test\r\n\r\n"
    )
    assert challenge.startswith(b"HTTP/1.1 404")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # no certificate for a name not listed
        await asyncio.open_connection("127.0.0.1", https_port, ssl=context, server_hostname="other.test")
