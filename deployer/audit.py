"""The audit log: one line on each host for each change pydeploy makes there, in Kamal's file and format.

`.kamal/<service>[-<destination>]-audit.log` gets `[<UTC time>] [<performer>] [<destination>] [<role>]
<message>` (the destination and role tags only when there is one), so a host tells who deployed,
rolled back or pruned what and when, whether it was Kamal or pydeploy. `pydeploy audit` shows its end.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import getpass
import subprocess
from collections.abc import Iterable
from shlex import quote

from deployer.config import DeployConfig
from deployer.remote import Host

REVEALED_LINES = 50


def log_path(config: DeployConfig) -> str:
    return f".kamal/{config.service_with_destination}-audit.log"


@functools.cache
def performer() -> str:
    """Who acts, as Kamal names them: the git user's email, else the login name."""
    try:
        email = subprocess.run(
            ["git", "config", "user.email"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        email = ""
    return email or getpass.getuser()


def audit_line(config: DeployConfig, message: str, role: str | None = None) -> str:
    recorded_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = [recorded_at, performer(), config.destination, role]
    return " ".join(f"[{tag}]" for tag in tags if tag) + f" {message}"


def record_command(config: DeployConfig, message: str, role: str | None = None) -> str:
    """The shell command that appends `message` to the host's audit log."""
    return f"mkdir -p .kamal && echo {quote(audit_line(config, message, role))} >> {log_path(config)}"


def reveal_command(config: DeployConfig) -> str:
    """The end of the host's audit log (nothing when no command was audited there yet)."""
    return f"tail -n {REVEALED_LINES} {log_path(config)} 2>/dev/null || true"


async def audit(config: DeployConfig, hosts: Iterable[Host], message: str, role: str | None = None) -> None:
    """Record `message` in the audit log of every host, in parallel; RemoteError if a host cannot."""
    await asyncio.gather(*(host.run(record_command(config, message, role)) for host in hosts))
