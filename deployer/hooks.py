"""Kamal's hooks (spec 12): the executable files in `hooks_path` (`.kamal/hooks`), run here, not on the hosts.

Each runs with the `KAMAL_*` variables of the command that runs it (and, for `pre-connect`, `pre-deploy`
and `post-deploy`, every secret), from the project's directory. A hook that exits non-zero stops the
command with ``Hook `<name>` failed:`` and what it printed; pre-hooks run before the step they guard,
so a failing one stops the command before it changes anything. Their output is shown with -v (and
always when they fail), redacted like everything pydeploy prints. `-H` skips them all.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deployer.audit import performer
from deployer.config import ConfigError, DeployConfig
from deployer.errors import DeployError
from deployer.output import Output

NAMES = (
    "docker-setup",
    "pre-connect",
    "pre-build",
    "pre-deploy",
    "post-deploy",
    "pre-app-boot",
    "post-app-boot",
    "pre-proxy-reboot",
    "post-proxy-reboot",
)
WITH_SECRETS = frozenset({"pre-connect", "pre-deploy", "post-deploy"})
RENAMED = {"pre-traefik-reboot": "pre-proxy-reboot", "post-traefik-reboot": "post-proxy-reboot"}


class HookError(DeployError):
    """A hook failed: the command stops; the message carries what the hook printed."""


def check_hooks(root: Path, config: DeployConfig, enabled: bool = True) -> None:
    """ConfigError for Kamal 1's traefik hooks (renamed in Kamal 2) and, unless hooks are skipped, for a
    hook file that cannot run: found before anything runs rather than halfway through a deploy."""
    directory = root / config.hooks_path
    renamed = [name for name in RENAMED if (directory / name).exists()]
    if renamed:
        advice = ", ".join(f"{name} to {RENAMED[name]}" for name in renamed)
        raise ConfigError(f"Found {', '.join(renamed)} in {config.hooks_path}: rename {advice}")
    if not enabled:
        return
    for name in NAMES:
        path = directory / name
        if path.exists() and not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(
                f"The hook {config.hooks_path}/{name} is not executable: `chmod +x` it (or -H to skip hooks)"
            )


@dataclass(frozen=True)
class Invocation:
    """What the hooks are told about the command running them (KAMAL_COMMAND, KAMAL_HOSTS, ...)."""

    command: str
    subcommand: str | None
    hosts: tuple[str, ...]
    roles: tuple[str, ...] | None  # only when -r chose roles


class Hooks:
    """Runs the project's hooks for one command; `enabled=False` (-H) makes every `run` a no-op."""

    def __init__(
        self,
        root: Path,
        config: DeployConfig,
        secret_values: Mapping[str, str],
        out: Output,
        invocation: Invocation,
        enabled: bool = True,
    ) -> None:
        self.root = root
        self.config = config
        self.secrets = secret_values
        self.out = out
        self.invocation = invocation
        self.enabled = enabled

    def path(self, name: str) -> Path:
        return self.root / self.config.hooks_path / name

    async def run(
        self,
        name: str,
        *,
        hosts: Iterable[str] | None = None,
        version: str | None = None,
        lock: bool = False,
        runtime: float | None = None,
    ) -> None:
        """Run hook `name` if the project has it; HookError when it fails. `hosts` (default: the command's)
        is the boot group for the app-boot hooks, `version` what the command deploys (default: the
        config's), `lock` whether the deploy lock is held now, `runtime` the seconds a deploy took."""
        path = self.path(name)
        if not self.enabled or not path.exists():
            return
        env = {**os.environ, **self.environment(name, hosts, version, lock, runtime)}
        with self.out.step("local", f"hook {name}"):
            try:
                process = await asyncio.create_subprocess_exec(
                    str(path),
                    cwd=self.root,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
            except OSError as exc:
                raise HookError(f"Hook `{name}` could not run ({path}): {exc}") from None
            output = (await process.communicate())[0].decode(errors="replace").rstrip()
            if process.returncode != 0:
                raise HookError(
                    f"Hook `{name}` failed (exit status {process.returncode}):\n{output or '(no output)'}"
                )
        if self.out.verbose and output:
            for line in output.splitlines():
                self.out.line(f"  local   {line}", "dim")

    def environment(
        self,
        name: str,
        hosts: Iterable[str] | None = None,
        version: str | None = None,
        lock: bool = False,
        runtime: float | None = None,
    ) -> dict[str, str]:
        """The variables Kamal gives hook `name` (spec 12); secrets too for the hooks that get them."""
        config = self.config
        version = version or config.version
        details = {
            "RECORDED_AT": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "PERFORMER": performer(),
            "DESTINATION": config.destination,
            "VERSION": version,
            "SERVICE_VERSION": f"{config.service}@{abbreviated(version)}",
            "SERVICE": config.service,
            "HOSTS": ",".join(self.invocation.hosts if hosts is None else hosts),
            "ROLES": ",".join(self.invocation.roles) if self.invocation.roles is not None else None,
            "LOCK": str(lock).lower(),
            "COMMAND": self.invocation.command,
            "SUBCOMMAND": self.invocation.subcommand,
            "RUNTIME": None if runtime is None else str(round(runtime)),
        }
        env = {f"KAMAL_{key}": value for key, value in details.items() if value is not None}
        if name in WITH_SECRETS:
            env.update(self.secrets)
        return env


def abbreviated(version: str) -> str:
    """A version as Kamal shortens it for KAMAL_SERVICE_VERSION: a commit's first 7 characters; a version
    with `_` in it (`<sha>_uncommitted_<hex>`) whole."""
    return version if "_" in version else version[:7]
