"""Running commands on the hosts over SSH (asyncssh), one connection per host, hosts in parallel.

asyncssh reads ~/.ssh/config and uses the SSH agent (SSH_AUTH_SOCK) like the ssh command does; keys
from `ssh.keys` are added. Host keys are checked against ~/.ssh/known_hosts (PYDEPLOY_KNOWN_HOSTS
overrides the file): a host seen for the first time is trusted and recorded there (as ssh's
`StrictHostKeyChecking accept-new`), a host whose key changed is refused.
Secrets travel only on a command's stdin, never on its command line.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from deployer.config import SshSettings

CONNECT_TIMEOUT = 15.0


class RemoteError(Exception):
    """A command failed on a host: which host, which command, and what it said."""

    def __init__(self, host: str, command: str, status: int | None, output: str) -> None:
        self.host, self.command, self.status, self.output = host, command, status, output
        reason = f"exit status {status}" if status is not None else "the connection failed"
        super().__init__(f"{host}: `{command}` failed ({reason}): {output.strip()[-2000:]}")


@dataclass
class Completed:
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def known_hosts_path() -> Path:
    return Path(os.environ.get("PYDEPLOY_KNOWN_HOSTS", Path.home() / ".ssh" / "known_hosts"))


class Host:
    """One host: a lazily opened SSH connection and the commands run on it."""

    def __init__(self, name: str, ssh: SshSettings, on_command: CommandLog | None = None) -> None:
        self.name = name
        self.ssh = ssh
        self.on_command = on_command
        self._connection: asyncssh.SSHClientConnection | None = None
        self._tunnel: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._connection is None:
                self._connection = await self._connect()
            return self._connection

    async def _connect(self) -> asyncssh.SSHClientConnection:
        options = {
            "username": self.ssh.user,
            "port": self.ssh.port,
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalive_interval": 30,
        }
        if self.ssh.keys:
            options["client_keys"] = [os.path.expanduser(key) for key in self.ssh.keys]
        try:
            if self.ssh.proxy is not None:
                jump = self.ssh.proxy
                self._tunnel = await _open(jump.host, {**options, "username": jump.user, "port": jump.port})
                options["tunnel"] = self._tunnel
            return await _open(self.name, options)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise RemoteError(self.name, "ssh", None, _describe(exc)) from None

    async def run(self, command: str, stdin: bytes | None = None, check: bool = True) -> Completed:
        """Run `command` through the login shell; RemoteError when it fails (and `check`)."""
        connection = await self.connection()
        try:
            result = await connection.run(command, input=stdin, encoding=None if stdin else "utf-8")
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(self.name, command, None, _describe(exc)) from None
        stdout = _text(result.stdout)
        stderr = _text(result.stderr)
        completed = Completed(result.exit_status if result.exit_status is not None else 255, stdout, stderr)
        if self.on_command is not None:
            self.on_command(self.name, command, completed)
        if check and completed.status != 0:
            raise RemoteError(self.name, command, completed.status, completed.output)
        return completed

    async def write_file(self, path: str, content: bytes, mode: str = "600") -> None:
        """Write `content` to `path` (its directory created), readable by the login user only."""
        directory = shlex.quote(os.path.dirname(path))
        target = shlex.quote(path)
        await self.run(
            f"umask 077 && mkdir -p {directory} && cat > {target} && chmod {mode} {target}", content
        )

    async def close(self) -> None:
        for connection in (self._connection, self._tunnel):
            if connection is not None:
                connection.close()
                await connection.wait_closed()
        self._connection = self._tunnel = None


class CommandLog:
    """Called with every command run and its result (for `-v`)."""

    def __call__(self, host: str, command: str, completed: Completed) -> None: ...


_RECORDING = asyncio.Lock()  # parallel first connections record their keys one at a time


async def _open(host: str, options: dict) -> asyncssh.SSHClientConnection:
    """Connect, checking the host key against the known_hosts files (hashed entries, wildcards and
    @cert-authority lines included); a host none of them knows is trusted on first sight and recorded."""
    port = options.get("port", 22)
    files = _known_hosts_files()
    if files and _known(files, host, port):
        return await asyncssh.connect(host, known_hosts=files, **options)
    connection = await asyncssh.connect(host, known_hosts=None, **options)
    key = connection.get_server_host_key()
    if key is not None:
        # Under the name given and the address reached: ssh and asyncssh check either (a name from
        # ~/.ssh/config may stand for another HostName).
        address = connection.get_extra_info("peername")[0]
        names = ",".join(dict.fromkeys(_host_pattern(name, port) for name in (host, address)))
        async with _RECORDING:
            path = known_hosts_path()
            if not _known([str(path)] if path.exists() else [], host, port):
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with path.open("a") as file:
                    file.write(f"{names} {key.export_public_key().decode().strip()}\n")
    return connection


def _known_hosts_files() -> list[str]:
    return [str(path) for path in (known_hosts_path(), Path("/etc/ssh/ssh_known_hosts")) if path.exists()]


def _known(files: list[str], host: str, port: int) -> bool:
    """Whether any known_hosts entry (or certificate authority) speaks for `host`."""
    if not files:
        return False
    trusted_keys, trusted_authorities, *_ = asyncssh.read_known_hosts(files).match(host, "", port)
    return bool(trusted_keys or trusted_authorities)


def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"the host key does not match {known_hosts_path()} (a changed or spoofed host): {exc}"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "permission denied: no key was accepted (check ssh.user, ssh.keys and your SSH agent)"
    return str(exc) or exc.__class__.__name__
