"""The command lines of the app commands people run every day: exec, logs, maintenance and live.

Pure functions, quoted for sh, as Kamal builds them (spec 13.3-13.5). A command to run in the app is
taken as Kamal takes it: its words joined by spaces and read by the host's shell, so the alias
`console: app exec -i --reuse "bin/rails console"` runs `bin/rails` with the argument `console`.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from shlex import quote

from deployer import docker
from deployer.config import CANARY_SUFFIX, DeployConfig, Role


def joined(words: Sequence[str]) -> str:
    """A command given as words, as the remote shell gets it (Kamal's `join_commands`)."""
    return " ".join(word.strip() for word in words)


def _env_flags(extra_env: Mapping[str, str]) -> list[str]:
    return [f"--env {quote(f'{key}={value}')}" for key, value in extra_env.items()]


def exec_in_running(
    config: DeployConfig,
    role: Role,
    version: str,
    command: str,
    extra_env: Mapping[str, str] | None = None,
    interactive: bool = False,
) -> str:
    """`docker exec` in the role's running container of `version` (`--reuse`)."""
    parts = ["docker exec", *(["-it"] if interactive else []), *_env_flags(extra_env or {})]
    return " ".join([*parts, quote(config.container_name(role, version)), command])


def exec_container_name(config: DeployConfig, role: Role, version: str) -> str:
    """`<prefix>-exec-<version>-<6 hex>`: one-off containers never clash with each other or the app's."""
    return f"{config.container_prefix(role)}-exec-{version}-{secrets.token_hex(3)}"


def exec_in_new(
    config: DeployConfig,
    role: Role,
    version: str,
    command: str,
    extra_env: Mapping[str, str] | None = None,
    interactive: bool = False,
) -> str:
    """`docker run --rm` of `version` with the role's env (secrets through its env file), volumes and
    options, on the app's network: a console sees what the app sees, and nothing is left behind."""
    parts = ["docker run", *(["-it"] if interactive else []), "--rm"]
    parts += [f"--name {quote(exec_container_name(config, role, version))}", f"--network {docker.NETWORK}"]
    parts += _env_flags(config.env_for(role).clear)
    parts.append(f"--env-file {docker.env_file_path(config, role)}")
    parts += _env_flags(extra_env or {})
    parts += [f"--volume {quote(volume)}" for volume in config.volumes]
    parts += docker.options(role.options)
    return " ".join([*parts, quote(docker.image(config, version)), command])


def logs(config: DeployConfig, role: Role, version: str, *narrowed: object, **options: object) -> str:
    """`docker logs` of the role's container of `version` (docker.container_logs' filters)."""
    return docker.container_logs(config.container_name(role, version), *narrowed, **options)


def maintenance(config: DeployConfig, role: Role, drain_timeout: float, message: str | None = None) -> str:
    """`kamal-proxy stop`: in-flight requests get `drain_timeout` to finish, then every request gets the
    503 page (the app's error page if it has one) with `message`."""
    flags = [f"--drain-timeout={drain_timeout:g}s"]
    if message is not None:
        flags.append(f"--message={quote(message)}")
    return _proxy(config, role, "stop", flags)


def live(config: DeployConfig, role: Role) -> str:
    """`kamal-proxy resume`: the app serves again."""
    return _proxy(config, role, "resume", [])


def proxy_remove(config: DeployConfig, role: Role) -> str:
    """`kamal-proxy remove`: the proxy forgets the role's service (before its containers go)."""
    return _proxy(config, role, "remove", [])


def rollout(config: DeployConfig, role: Role, command: str, flags: list[str]) -> str:
    """`kamal-proxy rollout deploy|set|stop` for the role's service (see rollout.py)."""
    return _proxy(config, role, f"rollout {command}", flags)


def canary_role(role: Role) -> Role:
    """The shadow role a rollout's containers belong to (see rollout.py)."""
    return dataclasses.replace(role, name=role.name + CANARY_SUFFIX)


def end_rollout(config: DeployConfig, role: Role) -> str:
    """Where the role has canary containers: the proxy's split removed, so every request goes to the live
    containers again (or the proxy has no such service: nothing reaches them), then the canaries stopped
    with their stop timeout and removed. Nothing where there is no canary."""
    canaries = f"docker ps --all --quiet {docker.role_filters(config, canary_role(role))}"
    stop = rollout(config, role, "stop", [])
    service = quote(f"^{config.container_prefix(role)} ")
    absent = (
        f"! docker exec {docker.PROXY_CONTAINER} {docker.PROXY_PROGRAM} list 2>/dev/null | grep -q {service}"
    )
    gone = docker.remove_containers(config, canary_role(role))
    return f'if [ -n "$({canaries})" ]; then {{ {stop} || {absent}; }} && {gone} >/dev/null; fi'


def _proxy(config: DeployConfig, role: Role, command: str, flags: list[str]) -> str:
    service = quote(config.container_prefix(role))
    return " ".join(["docker exec", docker.PROXY_CONTAINER, docker.PROXY_PROGRAM, command, service, *flags])


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """`-e KEY=VALUE` (or Kamal's `KEY:VALUE`) options as a mapping; ValueError names a bad one."""
    env = {}
    for pair in pairs:
        separator = "=" if "=" in pair else ":"
        key, found, value = pair.partition(separator)
        if not found or not key:
            raise ValueError(f"-e {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env
