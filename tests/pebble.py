"""A real ACME CA for tests: pebble plus its mock DNS (pebble-challtestsrv), on free loopback ports.

Debian's `pebble` package ships no test certificates, so each run makes its own CA with trustme for
pebble's HTTPS listener. The mock DNS answers every name with 127.0.0.1 (no AAAA), so pebble validates
HTTP-01 challenges against 127.0.0.1:<http_port>, where the test runs its responder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # no random 0-15 s pause before validating
    "PEBBLE_WFE_NONCEREJECT": "0",  # no injected badNonce errors (5 % by default)
    "PEBBLE_AUTHZREUSE": "0",  # never reuse a valid authorization: every order is validated
}


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    ca_bundle: str  # the CA of pebble's HTTPS listener (its directory and management API)
    management_url: str
    http_port: int  # where pebble sends HTTP-01 validation requests

    def roots_pem(self) -> bytes:
        """Pebble's issuing root, new at every start: what clients verify issued chains against."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(f"{self.management_url}/roots/0", context=context, timeout=5) as reply:
            return reply.read()


def require_pebble() -> None:
    """Skip when pebble is missing on a developer machine, but fail as root (CI installs it)."""
    if shutil.which("pebble") and shutil.which("pebble-challtestsrv"):
        return
    reason = "pebble is not installed (apt-get install pebble)"
    if os.geteuid() == 0:
        pytest.fail(f"{reason}; as root (CI) it is required", pytrace=False)
    pytest.skip(reason)


def free_port(udp_too: bool = False) -> int:
    """A loopback port free right now (on UDP as well when asked, for the DNS server)."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@contextmanager
def start_pebble(
    workdir: Path,
    http_port: int | None = None,
    eab_keys: dict[str, str] | None = None,
    tls_port: int | None = None,
) -> Iterator[Pebble]:
    """Run pebble and its mock DNS until the block ends. It validates HTTP-01 on `http_port` and
    TLS-ALPN-01 on `tls_port` of 127.0.0.1. With `eab_keys` ({kid: base64url HMAC key}) pebble
    requires External Account Binding."""
    require_pebble()
    workdir.mkdir(parents=True, exist_ok=True)
    ca_bundle = _make_pki(workdir)
    dns_port, dns_admin_port = free_port(udp_too=True), free_port()
    listen_port, management_port = free_port(), free_port()
    http_port = http_port or free_port()
    config = {
        "listenAddress": f"127.0.0.1:{listen_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(workdir / "pebble.crt"),
        "privateKey": str(workdir / "pebble.key"),
        "httpPort": http_port,
        "tlsPort": tls_port or free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
        "externalAccountMACKeys": eab_keys or {},
    }
    (workdir / "pebble-config.json").write_text(json.dumps({"pebble": config}))
    mock_dns = ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns_port}", "-management"]
    mock_dns += [f"127.0.0.1:{dns_admin_port}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]
    mock_dns += ["-http01", "", "-https01", "", "-tlsalpn01", ""]  # the test under way answers challenges
    ca = ["pebble", "-config", str(workdir / "pebble-config.json"), "-dnsserver", f"127.0.0.1:{dns_port}"]
    with ExitStack() as stack:
        dns = stack.enter_context(_process(workdir / "challtestsrv.log", mock_dns))
        pebble = stack.enter_context(
            _process(workdir / "pebble.log", [*ca, "-strict=false"], env={**os.environ, **PEBBLE_ENV})
        )
        _wait_until(dns, lambda: _accepts(dns_admin_port))
        directory_url = f"https://127.0.0.1:{listen_port}/dir"
        _wait_until(pebble, lambda: _answers(directory_url, ca_bundle))
        yield Pebble(directory_url, ca_bundle, f"https://127.0.0.1:{management_port}", http_port)


def _make_pki(workdir: Path) -> str:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(workdir / "pebble.key")
    server.cert_chain_pems[0].write_to_path(workdir / "pebble.crt")
    ca.cert_pem.write_to_path(workdir / "ca.crt")
    return str(workdir / "ca.crt")


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def _process(log: Path, argv: list[str], env: dict[str, str] | None = None) -> Iterator[_Running]:
    """Start a process logging to a file; stop it by its PID at the end (TERM, then KILL)."""
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        yield _Running(process, log)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until(running: _Running, ready: Callable[[], bool]) -> None:
    """Poll until `ready`; fail with the process's log if it exits or the time is up."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if running.process.poll() is not None or time.monotonic() > deadline:
            code = running.process.returncode
            state = "not ready in time" if code is None else f"exited with {code}"
            raise RuntimeError(f"{running.process.args[0]} {state}:\n{running.log.read_text()}")
        time.sleep(0.02)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _answers(url: str, ca_bundle: str) -> bool:
    context = ssl.create_default_context(cafile=ca_bundle)
    try:
        with urllib.request.urlopen(url, context=context, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False
