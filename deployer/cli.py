"""`pydeploy`: Kamal's deploy commands for config/deploy.yml, over SSH, with pyproxy on every host.

Exit status: 0 on success, 1 when a step fails (the message says which host, which step and why), 2 for
bad command-line use or a configuration or secrets problem.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from deployer import docker
from deployer.config import CONFIG_FILE, ConfigError, DeployConfig, load_config
from deployer.deploy import DeployError, Deployment
from deployer.output import Output
from deployer.remote import RemoteError
from deployer.secrets import check_referenced, load_secrets, redact, redact_data

VERSION = "0.1.0"


class UsageError(Exception):
    """Bad command-line use: one line, exit status 2."""


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. Only the top level sets defaults: a
    subcommand's would overwrite what was given before the command (argparse's way)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config-file", default=default(CONFIG_FILE), help="the base config file")
    common.add_argument(
        "-d", "--destination", default=default(None), help="also load <config>.<destination>.yml"
    )
    common.add_argument(
        "--version", dest="app_version", default=default(None), help="act on this version, not the git commit"
    )
    common.add_argument(
        "-h", "--hosts", default=default(None), help="only these hosts (comma list, * wildcards)"
    )
    common.add_argument(
        "-r", "--roles", default=default(None), help="only these roles (comma list, * wildcards)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="every remote command and output"
    )
    common.add_argument("-q", "--quiet", action="store_true", default=default(False), help="only errors")
    common.add_argument("--help", action="help", help="show this help")
    return common


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pydeploy", add_help=False, parents=[_global_options(True)])
    common = _global_options(False)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("setup", "install Docker where missing, boot the proxy, then deploy"),
        ("deploy", "build, push and deploy the current commit to every host"),
        ("redeploy", "deploy without booting the proxy or pruning"),
    ):
        command = commands.add_parser(name, help=text, add_help=False, parents=[common])
        command.add_argument("-P", "--skip-push", action="store_true", help="use the image already pushed")
    rollback = commands.add_parser(
        "rollback", help="go back to a previous version", add_help=False, parents=[common]
    )
    rollback.add_argument("rollback_version", nargs="?", metavar="VERSION", help="default: the previous one")
    app = commands.add_parser("app", help="the app's containers", add_help=False, parents=[common])
    app_commands = app.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("boot", "stop", "start", "containers", "details", "version"):
        app_commands.add_parser(name, add_help=False, parents=[common])
    logs = app_commands.add_parser("logs", add_help=False, parents=[common])
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines from the end (default 100)")
    execute = app_commands.add_parser("exec", add_help=False, parents=[common])
    execute.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="CMD")
    proxy = commands.add_parser("proxy", help="the pyproxy container", add_help=False, parents=[common])
    proxy_commands = proxy.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("boot", "reboot", "logs", "details"):
        proxy_commands.add_parser(name, add_help=False, parents=[common])
    lock = commands.add_parser("lock", help="the deploy lock", add_help=False, parents=[common])
    lock_commands = lock.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("status", "release"):
        lock_commands.add_parser(name, add_help=False, parents=[common])
    acquire = lock_commands.add_parser("acquire", add_help=False, parents=[common])
    acquire.add_argument("-m", "--message", required=True, help="why the lock is taken")
    commands.add_parser(
        "config", help="print the merged config, secrets redacted", add_help=False, parents=[common]
    )
    commands.add_parser("version", help="print pydeploy's version", add_help=False, parents=[common])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(args_list)
    except UsageError as exc:
        print(f"pydeploy: {exc}", file=sys.stderr)
        return 2
    if args.command == "version":
        print(VERSION)
        return 0
    root = Path.cwd()
    try:
        # Only building and booting need the version git (or $VERSION) gives; the rest act on what runs.
        action = getattr(args, "action", None)
        builds = args.command in ("setup", "deploy", "redeploy") or (args.command, action) == ("app", "boot")
        version = args.app_version or (None if builds else "latest")
        config = load_config(root, args.destination, version, config_file=args.config_file)
        for warning in () if args.quiet else config.warnings:
            print(f"pydeploy: warning: {warning}", file=sys.stderr)
        secrets = load_secrets(root, args.destination)
        check_referenced(config, secrets)
    except ConfigError as exc:
        print(f"pydeploy: {exc}", file=sys.stderr)
        return 2
    out = Output(lambda text: redact(text, secrets), verbose=args.verbose, quiet=args.quiet)
    if args.command == "config":
        out.line(yaml.safe_dump(redact_data(config.as_dict(), secrets), sort_keys=False).rstrip())
        return 0
    try:
        hosts = _selected_hosts(config, args)
        return asyncio.run(_run(args, config, secrets, out, root, hosts))
    except UsageError as exc:
        print(f"pydeploy: {exc}", file=sys.stderr)
        return 2
    except (DeployError, RemoteError) as exc:
        out.error(f"pydeploy: {exc}")
        return 1
    except KeyboardInterrupt:
        out.error("pydeploy: interrupted (the deploy lock was released where it was held)")
        return 130


def _parse(args: list[str]) -> argparse.Namespace:
    """Parse, expanding a user alias first (`aliases: {console: app exec bash}`)."""
    top = parser()
    top.exit = _usage_exit  # type: ignore[method-assign]
    top.error = _usage_error  # type: ignore[method-assign]
    for sub in _all_parsers(top):
        sub.error = _usage_error  # type: ignore[method-assign]
    first = _command_word(args)
    known = {"setup", "deploy", "redeploy", "rollback", "app", "proxy", "lock", "config", "version"}
    if first is not None and first not in known:
        expansion = _alias(first, args)
        if expansion is None:
            raise UsageError(f"unknown command {first!r} (and no alias of that name in the config)")
        index = args.index(first)
        # Options given after the alias go before its expansion: `console -h web1` must not become
        # arguments of the command an `app exec` alias runs.
        args = args[:index] + args[index + 1 :] + shlex.split(expansion)
    return top.parse_args(args)


_VALUED = {"-c", "--config-file", "-d", "--destination", "--version", "-h", "--hosts", "-r", "--roles"}


def _command_word(args: list[str]) -> str | None:
    """The first argument that is neither a global option nor an option's value."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _alias(name: str, args: list[str]) -> str | None:
    try:
        destination = _flag(args, ("-d", "--destination"), None)
        config = load_config(
            Path.cwd(), destination, "alias", config_file=_flag(args, ("-c", "--config-file"), CONFIG_FILE)
        )
    except (ConfigError, IndexError):
        return None
    return config.aliases.get(name)


def _flag(args: list[str], names: tuple[str, str], default: str | None) -> str | None:
    """A global option's value (`-d x`, `-dx`, `--destination x`, `--destination=x`), before parsing."""
    short, long = names
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(long + "="):
            return arg[len(long) + 1 :]
        if arg.startswith(short) and len(arg) > 2 and not arg.startswith("--"):
            return arg[2:]
    return default


def _all_parsers(top: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_all_parsers(sub)]
    return found


def _usage_error(message: str) -> None:
    raise UsageError(message)


def _usage_exit(status: int = 0, message: str | None = None) -> None:
    if status:
        raise UsageError(message or "bad usage")
    sys.exit(0)


def _selected_hosts(config: DeployConfig, args: argparse.Namespace) -> list[str]:
    roles = [role for role in config.roles if _matches(role.name, args.roles)]
    if not roles:
        raise UsageError(f"No --roles match for {args.roles}")
    hosts = [
        host for host in dict.fromkeys(h for role in roles for h in role.hosts) if _matches(host, args.hosts)
    ]
    if not hosts:
        raise UsageError(f"No --hosts match for {args.hosts}")
    return hosts


def _matches(name: str, patterns: str | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(name, p.strip()) for p in patterns.split(","))


async def _run(
    args: argparse.Namespace,
    config: DeployConfig,
    secrets: dict[str, str],
    out: Output,
    root: Path,
    hosts: list[str],
) -> int:
    roles = (
        None
        if args.roles is None
        else [role.name for role in config.roles if _matches(role.name, args.roles)]
    )
    deployment = Deployment(config, secrets, out, hosts, roles)
    out.start_live()
    try:
        return await _dispatch(args, deployment, out, root)
    finally:
        out.stop_live()
        await deployment.close()


async def _dispatch(args: argparse.Namespace, deployment: Deployment, out: Output, root: Path) -> int:
    config = deployment.config
    command = args.command
    if command in ("setup", "deploy", "redeploy"):
        out.info(
            f"{command.capitalize()} of {config.service} {config.version} to {', '.join(deployment.hosts)}"
        )
        try:
            await getattr(deployment, command)(root, args.skip_push)
        except DeployError:
            await _say_what_runs(deployment, out)
            raise
        out.info(f"{config.service} {config.version} is live on {', '.join(deployment.hosts)}")
        out.summary()
    elif command == "rollback":
        try:
            version = await deployment.rollback(args.rollback_version)
        except DeployError:
            await _say_what_runs(deployment, out)
            raise
        out.info(f"Rolled back to {version} on {', '.join(deployment.hosts)}")
    elif command == "lock":
        await _lock(args, deployment, out)
    elif command == "proxy":
        await _proxy(args, deployment, out)
    else:
        await _app(args, deployment, out)
    return 0


async def _say_what_runs(deployment: Deployment, out: Output) -> None:
    """After a failed deploy: the version each host serves now (the old one where it did not switch)."""
    versions = await deployment.running_versions()
    out.error("Running now: " + ", ".join(f"{host}: {version}" for host, version in versions.items()))


async def _lock(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    if args.action == "status":
        out.line(await deployment.lock_status())
    elif args.action == "acquire":
        await deployment.acquire_lock(args.message)
        out.info(f"Deploy lock acquired on {deployment.primary.name}")
    else:
        await deployment.release_lock()
        out.info(f"Deploy lock released on {deployment.primary.name}")


async def _proxy(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    if args.action == "boot":
        await deployment.boot_proxy()
    elif args.action == "reboot":
        await deployment.reboot_proxy()
    else:
        command = docker.proxy_logs() if args.action == "logs" else docker.proxy_details()
        await _on_each(deployment, out, lambda role, running: command, per_role=False)


async def _app(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    config = deployment.config
    action = args.action
    if action == "boot":
        await deployment.boot(config.version)
        return
    if action == "exec" and not args.exec_command:
        raise UsageError("No command provided. You must specify a command to execute.")
    requested = config.version if args.app_version else None
    commands = {
        "exec": lambda role, running: (
            f"docker exec {shlex.quote(config.container_name(role, running))} {shlex.join(args.exec_command)}"
        ),
        "stop": lambda role, running: docker.stop(config, role, running),
        "start": lambda role, running: docker.start(config, role, requested or running),
        "containers": lambda role, running: docker.containers(config, role),
        "details": lambda role, running: docker.containers(config, role),
        "version": lambda role, running: f"echo {shlex.quote(running or 'none')}",
        "logs": lambda role, running: docker.logs(config, role, running, args.lines),
    }
    await _on_each(deployment, out, commands[action])


async def _on_each(deployment: Deployment, out: Output, command_for: object, per_role: bool = True) -> None:
    """Run a command on every selected host (per role there, given the role's running version) and print
    its output under the host's name."""
    config = deployment.config
    for name, host in deployment.hosts.items():
        roles = [role for role in config.roles if name in role.hosts] if per_role else [None]
        for role in roles:
            if role is None:
                command, label = command_for(None, None), name
            else:
                running = (await host.run(docker.current_version(config, role))).stdout.strip()
                command, label = command_for(role, running), f"{name} ({role.name})"
            result = await host.run(command, check=False)
            out.line(f"{label}:")
            out.line(result.output.rstrip() or "(nothing)")
            if result.status != 0:
                raise DeployError(f"{name}: `{command}` failed (exit status {result.status})")
