"""Commands that need the user's terminal on a host (`app exec -i`, `app logs -f`): the OpenSSH client.

asyncssh could allocate a pseudo-terminal too, but `ssh -t` already passes through what a person expects
of one: raw keystrokes and Ctrl-C, window size changes, the remote exit status. It is run as a child with
this terminal attached, with the same user, port, keys, jump host and known-hosts file pydeploy's own
connections use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from deployer.config import SshSettings
from deployer.remote import known_hosts_path


class NoTerminalError(Exception):
    """An interactive command was asked for without a terminal on stdin (bad usage: exit status 2)."""


def require_tty() -> None:
    """Refuse before anything runs when stdin is not a terminal: `ssh -t` would hang or garble it."""
    if not sys.stdin.isatty():
        raise NoTerminalError(
            "an interactive command needs a terminal on stdin (run it from a terminal, or drop -i)"
        )


def ssh_command(host: str, ssh: SshSettings, command: str, tty: bool = True) -> list[str]:
    """The `ssh` argument list that runs `command` on `host` through the login shell."""
    args = ["ssh", "-t" if tty else "-T"]
    args += ["-o", f"UserKnownHostsFile={known_hosts_path()}", "-o", "StrictHostKeyChecking=accept-new"]
    args += ["-o", "LogLevel=ERROR", "-p", str(ssh.port), "-l", ssh.user]
    if ssh.keys:
        args += ["-o", "IdentitiesOnly=yes"]
        for key in ssh.keys:
            args += ["-i", os.path.expanduser(key)]
    if ssh.proxy is not None:
        jump = ssh.proxy
        args += ["-J", f"{jump.user}@{jump.host}:{jump.port}"]
    return [*args, host, command]


def run_interactive(host: str, ssh: SshSettings, command: str) -> int:
    """Run `command` on `host` with this terminal attached; its exit status (ssh's 255 if the connection
    failed). Ctrl-C goes to the remote command, not to pydeploy."""
    try:
        return subprocess.call(ssh_command(host, ssh, command, tty=sys.stdin.isatty()))
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True)
class Session:
    """An interactive command, run once pydeploy's own connections and its live output are closed, so
    nothing else writes to the terminal while the user has it."""

    host: str
    ssh: SshSettings
    command: str

    def run(self) -> int:
        return run_interactive(self.host, self.ssh, self.command)
