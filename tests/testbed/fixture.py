"""The pydeploy test bed as a pytest fixture: real hosts to deploy to, a registry and the images.

`testbed` (session scope) runs `tests/testbed/up.sh` once per test session and `down.sh` at its end, and
returns a `Testbed` describing what is up. Use it from a test module or conftest.py with
`from tests.testbed.fixture import testbed  # noqa: F401`.

Without root it skips the tests that use it (the bed needs network namespaces, dockerd and iptables);
with root, a failed bring-up fails them loudly with the end of its log. PYDEPLOY_TESTBED=skip skips them
anyway; PYDEPLOY_TESTBED_KEEP=1 leaves the bed up after the session (the next one then starts in seconds).
The first bring-up on a machine builds the images (about a minute); the test that pays for it needs a
pytest timeout that allows for it (`pytest.mark.timeout(600)`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent
STATE = Path(os.environ.get("PYDEPLOY_TESTBED_DIR", "/tmp/pydeploy-testbed"))
UP_TIMEOUT = 1200  # seconds; a fresh machine needs about 1-2 minutes, most of it building images


@dataclass(frozen=True)
class Testbed:
    """What up.sh brought up, read from its `$PYDEPLOY_TESTBED_DIR/env` file."""

    __test__ = False  # not a test class, though its name starts with "Test"

    dir: Path  # the bed's state: keys, logs, pid files, the hosts' disks
    hosts: list[str]  # the hosts' addresses, h1 first: ["10.200.0.11", "10.200.0.12"]
    host_docker_sockets: list[str]  # each host's dockerd seen from here: DOCKER_HOST values, h1 first
    ssh_user: str  # "root" on every host; sshd on port 22
    ssh_key: Path  # the private key every host accepts
    ssh_known_hosts: Path  # every host's key, by address
    registry: str  # "10.200.0.1:5443": TLS (trusted by every dockerd here) and basic auth
    registry_user: str
    registry_password: str
    registry_ca: Path  # the registry's CA, for clients other than docker
    app_image: str  # "<registry>/testapp": tags v1 and v2 healthy, v3's /up answers 404; see app()
    proxy_image: str  # the top-level Dockerfile built on base_image, pushed: "<registry>/pyproxy:test"
    kamal_proxy_image: str  # the same, as Kamal wants it: "<registry>/pyproxy/kamal-proxy:v0.10.0"
    base_image: str  # local only: Debian 12 + python3, the stand-in for python:3.12-slim
    docker_config: Path  # DOCKER_CONFIG of the root namespace, logged in to the registry (for pushes)

    @classmethod
    def from_env_file(cls, path: Path) -> Testbed:
        env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return cls(
            dir=Path(env["TESTBED_DIR"]),
            hosts=env["TESTBED_HOSTS"].split(","),
            host_docker_sockets=env["TESTBED_HOST_DOCKER_SOCKETS"].split(","),
            ssh_user=env["TESTBED_SSH_USER"],
            ssh_key=Path(env["TESTBED_SSH_KEY"]),
            ssh_known_hosts=Path(env["TESTBED_SSH_KNOWN_HOSTS"]),
            registry=env["TESTBED_REGISTRY"],
            registry_user=env["TESTBED_REGISTRY_USER"],
            registry_password=env["TESTBED_REGISTRY_PASSWORD"],
            registry_ca=Path(env["TESTBED_REGISTRY_CA"]),
            app_image=env["TESTBED_APP_IMAGE"],
            proxy_image=env["TESTBED_PROXY_IMAGE"],
            kamal_proxy_image=env["TESTBED_KAMAL_PROXY_IMAGE"],
            base_image=env["TESTBED_BASE_IMAGE"],
            docker_config=Path(env["TESTBED_DOCKER_CONFIG"]),
        )

    def app(self, version: str) -> str:
        """The test app's image for `version` ("v1", "v2" or "v3")."""
        return f"{self.app_image}:{version}"

    @property
    def kamal_proxy_version(self) -> str:
        """The tag of kamal_proxy_image ("v0.10.0"): what Kamal's proxy.run `version` names."""
        return self.kamal_proxy_image.rpartition(":")[2]

    @property
    def kamal_proxy_repository(self) -> str:
        """kamal_proxy_image without the registry and the tag ("pyproxy/kamal-proxy")."""
        return self.kamal_proxy_image.rpartition(":")[0].removeprefix(f"{self.registry}/")

    def ssh_command(self, host: str, *command: str) -> list[str]:
        """An `ssh` command line that runs `command` on `host` as the deployer would log in."""
        return [
            "ssh",
            "-i",
            str(self.ssh_key),
            "-o",
            f"UserKnownHostsFile={self.ssh_known_hosts}",
            "-o",
            "BatchMode=yes",
            f"{self.ssh_user}@{host}",
            *command,
        ]

    def docker_env(self, host: str) -> dict[str, str]:
        """Environment for running `docker` here against `host`'s daemon (to inspect what a deploy did)."""
        socket = self.host_docker_sockets[self.hosts.index(host)]
        return {**os.environ, "DOCKER_HOST": socket}

    def reset(self) -> None:
        """Make every host like a fresh machine again: no containers, networks, volumes or ~ files."""
        _script("hosts.sh", "reset")


def unavailable_reason() -> str | None:
    """Why the bed cannot run here, or None."""
    if os.environ.get("PYDEPLOY_TESTBED") == "skip":
        return "the test bed is turned off (PYDEPLOY_TESTBED=skip)"
    if not sys.platform.startswith("linux"):
        return "the test bed needs Linux (network namespaces, dockerd)"
    if os.geteuid() != 0:
        return "the test bed needs root (network namespaces, dockerd, iptables): run the tests as root"
    return None


def _script(name: str, *args: str) -> None:
    done = subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=UP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def bring_up() -> Testbed:
    """Run up.sh (idempotent), keeping its output in <state>/up.log; fail the tests loudly if it fails."""
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "up.log"
    with log.open("w") as out:
        try:
            status = subprocess.run(
                [str(SCRIPTS / "up.sh")], stdout=out, stderr=subprocess.STDOUT, timeout=UP_TIMEOUT
            ).returncode
        except subprocess.TimeoutExpired:
            status = f"timeout after {UP_TIMEOUT} s"
    if status != 0:
        if os.environ.get("PYDEPLOY_TESTBED_KEEP") != "1":  # stop what did start; the log stays
            bring_down()
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"the test bed did not come up ({status}); end of {log}:\n{tail}", pytrace=False)
    return Testbed.from_env_file(STATE / "env")


def bring_down() -> None:
    with (STATE / "down.log").open("w") as out:
        subprocess.run([str(SCRIPTS / "down.sh")], stdout=out, stderr=subprocess.STDOUT, check=False)


# One bed per process, even if several modules import the fixture (each import is a fixture of its own).
_users: list[Testbed] = []


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    bed = _users[0] if _users else bring_up()
    _users.append(bed)
    yield bed
    _users.pop()
    if not _users and os.environ.get("PYDEPLOY_TESTBED_KEEP") != "1":
        bring_down()
