"""`pydeploy`: Kamal's deploy commands for config/deploy.yml, over SSH, with pyproxy on every host.

Exit status: 0 on success, 1 when a step fails (the message says which host, which step and why), 2 for
bad command-line use or a configuration or secrets problem.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import yaml

from deployer import accessory, app_commands, app_control, audit, docker, prerequisites, schema
from deployer.accessory import Accessories
from deployer.config import CONFIG_FILE, Accessory, ConfigError, DeployConfig, Role, load_config
from deployer.deploy import DeployError, Deployment, LockWait
from deployer.hooks import Hooks, Invocation, check_hooks
from deployer.housekeeping import Housekeeping
from deployer.interactive import NoTerminalError, Session, require_tty
from deployer.output import Output
from deployer.remote import Host, RemoteError
from deployer.rollout import Rollout
from deployer.secrets import check_referenced, load_secrets, redact, redact_data

VERSION = "0.1.0"


class UsageError(Exception):
    """Bad command-line use: one line, exit status 2."""


def _seconds(text: str) -> float:
    """A duration option: seconds, or a Go duration ("90s", "1m30s", "500ms"), as deploy.yml takes them."""
    try:
        return schema.seconds_option(text)
    except schema.Invalid as problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}") from None


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 1")
    return int(text)


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
        "-p", "--primary", action="store_true", default=default(False), help="only the primary host"
    )
    common.add_argument(
        "--lock-wait",
        action="store_true",
        default=default(False),
        help="wait for a deploy lock another command holds instead of failing at once",
    )
    common.add_argument(
        "--lock-wait-timeout",
        type=_seconds,
        default=default(LockWait.timeout),
        metavar="SECONDS",
        help=f"how long --lock-wait waits (default {LockWait.timeout:g}; 90s, 5m also do)",
    )
    common.add_argument(
        "--lock-wait-interval",
        type=_seconds,
        default=default(LockWait.interval),
        metavar="SECONDS",
        help=f"how often --lock-wait looks (default {LockWait.interval:g})",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="every remote command and output"
    )
    common.add_argument("-q", "--quiet", action="store_true", default=default(False), help="only errors")
    common.add_argument(
        "-H", "--skip-hooks", action="store_true", default=default(False), help="run no .kamal/hooks"
    )
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
        command.add_argument(
            "--watch",
            type=_seconds,
            default=0,
            metavar="DURATION",
            help="after the switch, watch the health checks this long (10s, 2m); any failure switches "
            "every host back to the previous version",
        )
    rollback = commands.add_parser(
        "rollback", help="go back to a previous version", add_help=False, parents=[common]
    )
    rollback.add_argument("rollback_version", nargs="?", metavar="VERSION", help="default: the previous one")
    _rollout_parser(
        commands.add_parser(
            "rollout",
            help="a canary: a new version for some requests (ours)",
            add_help=False,
            parents=[common],
        ),
        common,
    )
    app = commands.add_parser("app", help="the app's containers", add_help=False, parents=[common])
    app_actions = app.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("boot", "stop", "start", "containers", "details", "version", "live", "remove"):
        app_actions.add_parser(name, add_help=False, parents=[common])
    _app_logs_parser(app_actions.add_parser("logs", add_help=False, parents=[common]))
    execute = app_actions.add_parser("exec", add_help=False, parents=[common])
    execute.add_argument(
        "-i", "--interactive", action="store_true", help="on the primary host, with this terminal"
    )
    execute.add_argument("--reuse", action="store_true", help="in the running container, not a new one")
    execute.add_argument(
        "-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable (repeatable)"
    )
    execute.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="CMD")
    maintenance = app_actions.add_parser("maintenance", add_help=False, parents=[common])
    maintenance.add_argument("--message", help="shown on the 503 page while in maintenance")
    maintenance.add_argument(
        "--drain-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="for requests in flight (default: drain_timeout)",
    )
    stale = app_actions.add_parser("stale_containers", add_help=False, parents=[common])
    stale.add_argument("-s", "--stop", action="store_true", help="stop the stale containers found")
    prune = commands.add_parser(
        "prune", help="old containers and unused images", add_help=False, parents=[common]
    )
    prune_commands = prune.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("all", "images"):
        prune_commands.add_parser(name, add_help=False, parents=[common])
    prune_containers = prune_commands.add_parser("containers", add_help=False, parents=[common])
    prune_containers.add_argument(
        "--retain", type=_at_least_one, help="stopped containers kept per role (default: retain_containers)"
    )
    remove = commands.add_parser(
        "remove", help="everything pydeploy put on the hosts", add_help=False, parents=[common]
    )
    remove.add_argument("-y", "--confirmed", action="store_true", help="do not ask")
    commands.add_parser("details", help="the proxy, app and accessories", add_help=False, parents=[common])
    commands.add_parser("audit", help="the audit log of each host", add_help=False, parents=[common])
    server = commands.add_parser("server", help="commands on the hosts", add_help=False, parents=[common])
    server_commands = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    server_exec = server_commands.add_parser("exec", add_help=False, parents=[common])
    server_exec.add_argument(
        "-i", "--interactive", action="store_true", help="on the primary host, with this terminal"
    )
    server_exec.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="CMD")
    secrets = commands.add_parser(
        "secrets", help="the secrets (for debugging)", add_help=False, parents=[common]
    )
    secrets_commands = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    secrets_commands.add_parser("print", add_help=False, parents=[common])
    extract = secrets_commands.add_parser("extract", add_help=False, parents=[common])
    extract.add_argument("name", help="the secret's key, or the end of it after a /")
    extract.add_argument("secrets_json", metavar="JSON", help="what a password manager's fetch printed")
    proxy = commands.add_parser("proxy", help="the pyproxy container", add_help=False, parents=[common])
    proxy_commands = proxy.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ("boot", "reboot", "logs", "details"):
        proxy_commands.add_parser(name, add_help=False, parents=[common])
    _accessory_parser(commands, common)
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


def _accessory_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    accessory = commands.add_parser(
        "accessory", help="the accessories (databases, caches)", add_help=False, parents=[common]
    )
    actions = accessory.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, add_help=False, parents=[common])
        sub.add_argument("accessory_name", metavar="NAME", help="an accessory, or `all`")
        return sub

    for name in ("boot", "reboot", "start", "stop", "restart", "details"):
        action(name)
    remove = action("remove")
    remove.add_argument("-y", "--confirmed", action="store_true", help="do not ask for confirmation")
    _app_logs_parser(action("logs"))
    execute = action("exec")
    execute.add_argument("-i", "--interactive", action="store_true", help="on the first host, with a TTY")
    execute.add_argument("--reuse", action="store_true", help="in the running container, not a new one")
    execute.add_argument("exec_command", nargs=argparse.REMAINDER, metavar="CMD")


def _rollout_parser(rollout: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    deploy = actions.add_parser("deploy", add_help=False, parents=[common])
    deploy.add_argument("-P", "--skip-push", action="store_true", help="use the image already pushed")
    split = actions.add_parser("set", add_help=False, parents=[common])
    split.add_argument("--percent", type=_percent, help="share of kamal-rollout cookie values (0-100)")
    split.add_argument(
        "--list", dest="allowlist", help="kamal-rollout cookie values always sent (comma list)"
    )
    actions.add_parser("stop", add_help=False, parents=[common])


def _percent(text: str) -> int:
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number from 0 to 100")
    return int(text)


def _app_logs_parser(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("-n", "--lines", type=int, help="lines from the end (default 100, 10 with -f)")
    logs.add_argument("-s", "--since", help="since a time (2026-01-02T13:23:37Z) or for a while (42m)")
    logs.add_argument("-g", "--grep", help="only the lines matching this pattern (grep)")
    logs.add_argument("--grep-options", help="more options for grep (e.g. -i)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="follow the primary host's log (Ctrl-C ends)"
    )
    logs.add_argument("-T", "--skip-timestamps", action="store_true", help="without docker's timestamps")


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
    if (args.command, getattr(args, "action", None)) == ("secrets", "extract"):
        # Before the secrets are read: `.kamal/secrets` itself calls this, `$(pydeploy secrets extract ...)`.
        return _extract_secret(args.name, args.secrets_json)
    if getattr(args, "interactive", False):
        try:
            require_tty()
        except NoTerminalError as exc:
            print(f"pydeploy: {exc}", file=sys.stderr)
            return 2
    root = Path.cwd()
    try:
        # Only building and booting need the version git (or $VERSION) gives; the rest act on what runs.
        action = getattr(args, "action", None)
        builds = args.command in ("setup", "deploy", "redeploy") or (args.command, action) in (
            ("app", "boot"),
            ("rollout", "deploy"),
        )
        version = args.app_version or (None if builds else "latest")
        config = load_config(root, args.destination, version, config_file=args.config_file)
        for warning in () if args.quiet else config.warnings:
            print(f"pydeploy: warning: {warning}", file=sys.stderr)
        secrets = load_secrets(root, args.destination)
        check_referenced(config, secrets)
        check_hooks(root, config, enabled=not args.skip_hooks)
    except ConfigError as exc:
        print(f"pydeploy: {exc}", file=sys.stderr)
        return 2
    out = Output(lambda text: redact(text, secrets), verbose=args.verbose, quiet=args.quiet)
    if args.command == "config":
        out.line(yaml.safe_dump(redact_data(config.as_dict(), secrets), sort_keys=False).rstrip())
        return 0
    if args.command == "secrets":
        # The debugging command: values shown as they are (Kamal's `secrets print`), so not through `out`.
        for key, value in secrets.items():
            print(f"{key}={value}")
        return 0
    try:
        hosts = _selected_hosts(config, args)
        result = asyncio.run(_run(args, config, secrets, out, root, hosts))
        return result.run() if isinstance(result, Session) else result
    except UsageError as exc:
        print(f"pydeploy: {exc}", file=sys.stderr)
        return 2
    except (DeployError, RemoteError) as exc:
        out.error(f"pydeploy: {exc}")
        return 1
    except KeyboardInterrupt:
        out.error("pydeploy: interrupted (the deploy lock was released where it was held)")
        return 130


def _extract_secret(name: str, text: str) -> int:
    """`secrets extract NAME JSON`: the value of key NAME, or of the key ending in `/NAME` (a password
    manager's `vault/item/NAME`), from the JSON a `secrets fetch` printed."""
    try:
        fetched = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"pydeploy: secrets extract: the JSON does not parse: {exc}", file=sys.stderr)
        return 2
    if not isinstance(fetched, dict):
        print("pydeploy: secrets extract: the JSON is not an object of names and values", file=sys.stderr)
        return 2
    value = fetched.get(name)
    if value is None:
        value = next((found for key, found in fetched.items() if key.endswith(f"/{name}")), None)
    if value is None:
        print(f"pydeploy: Could not find secret {name}", file=sys.stderr)
        return 2
    print(value)
    return 0


def _parse(args: list[str]) -> argparse.Namespace:
    """Parse, expanding a user alias first (`aliases: {console: app exec bash}`)."""
    top = parser()
    top.exit = _usage_exit  # type: ignore[method-assign]
    top.error = _usage_error  # type: ignore[method-assign]
    for sub in _all_parsers(top):
        sub.error = _usage_error  # type: ignore[method-assign]
    first = _command_word(args)
    if first is not None and first not in _subcommands(top):
        expansion = _alias(first, args)
        if expansion is None:
            raise UsageError(f"unknown command {first!r} (and no alias of that name in the config)")
        index = args.index(first)
        args = args[:index] + _expanded(top, shlex.split(expansion), args[index + 1 :])
    return top.parse_args(args)


def _subcommands(command: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _expanded(top: argparse.ArgumentParser, expansion: list[str], given: list[str]) -> list[str]:
    """An alias's expansion with what was given after the alias's name, as Kamal appends it: options go
    right after the expansion's command words (`tail -n 5` is `app logs -n 5 -f`), other words at the
    end, so options never become words of the command an `app exec` alias runs (`console -h web1`)."""
    command = top
    position = 0
    while position < len(expansion) and (subcommands := _subcommands(command)):
        word = _command_word(expansion[position:])
        if word not in subcommands:
            break
        position += expansion[position:].index(word) + 1
        command = subcommands[word]
    valued = {option for action in command._actions if action.nargs != 0 for option in action.option_strings}
    options: list[str] = []
    words: list[str] = []
    remaining = iter(given)
    for arg in remaining:
        if arg == "--":
            words += remaining
        elif arg.startswith("-"):
            options.append(arg)
            if arg in valued:
                options += [next(remaining, "")]
        else:
            words.append(arg)
    return [*expansion[:position], *options, *expansion[position:], *words]


_VALUED = {
    *("-c", "--config-file", "-d", "--destination", "--version", "-h", "--hosts", "-r", "--roles"),
    *("--lock-wait-timeout", "--lock-wait-interval"),
}


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
    for sub in _subcommands(top).values():
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
    return hosts[:1] if args.primary else hosts


def _matches(name: str, patterns: str | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(name, p.strip()) for p in patterns.split(","))


async def _run(
    args: argparse.Namespace,
    config: DeployConfig,
    secrets: dict[str, str],
    out: Output,
    root: Path,
    hosts: list[str],
) -> int | Session:
    roles = (
        None
        if args.roles is None
        else [role.name for role in config.roles if _matches(role.name, args.roles)]
    )
    chosen_roles = None if roles is None else tuple(roles)
    invocation = Invocation(args.command, getattr(args, "action", None), tuple(hosts), chosen_roles)
    hooks = None if args.skip_hooks else Hooks(root, config, secrets, out, invocation)
    deployment = Deployment(config, secrets, out, hosts, roles, hooks)
    if args.lock_wait:
        deployment.lock_wait = LockWait(args.lock_wait_timeout, args.lock_wait_interval)
    out.start_live()
    try:
        await deployment.hook("pre-connect")
        return await _dispatch(args, deployment, out, root)
    finally:
        out.stop_live()
        await deployment.close()


async def _dispatch(
    args: argparse.Namespace, deployment: Deployment, out: Output, root: Path
) -> int | Session:
    config = deployment.config
    command = args.command
    if command in ("setup", "deploy", "redeploy"):
        out.info(
            f"{command.capitalize()} of {config.service} {config.version} to {', '.join(deployment.hosts)}"
        )
        try:
            await getattr(deployment, command)(root, args.skip_push, args.watch)
        except DeployError:
            await _say_what_runs(deployment, out)
            raise
        await audit.audit(
            config, deployment.hosts.values(), f"Deployed app version {config.version} ({command})"
        )
        out.info(f"{config.service} {config.version} is live on {', '.join(deployment.hosts)}")
        out.summary()
    elif command == "rollback":
        try:
            version = await deployment.rollback(args.rollback_version)
        except DeployError:
            await _say_what_runs(deployment, out)
            raise
        await audit.audit(config, deployment.hosts.values(), f"Rolled back to app version {version}")
        out.info(f"Rolled back to {version} on {', '.join(deployment.hosts)}")
    elif command == "rollout":
        await _rollout(args, deployment, out, root)
    elif command == "lock":
        await _lock(args, deployment, out)
    elif command == "proxy":
        await _proxy(args, deployment, out)
    elif command == "accessory":
        return await _accessory(args, deployment, out, root)
    elif command in ("prune", "remove", "details"):
        await _housekeeping(args, deployment, out, root)
    elif command == "audit":
        await _on_each(deployment, out, lambda role, running: audit.reveal_command(config), per_role=False)
    elif command == "server":
        return await _server(args, deployment, out)
    else:
        return await _app(args, deployment, out, root)
    return 0


async def _say_what_runs(deployment: Deployment, out: Output) -> None:
    """After a failed deploy: the version each host serves now (the old one where it did not switch)."""
    versions = await deployment.running_versions()
    out.error("Running now: " + ", ".join(f"{host}: {version}" for host, version in versions.items()))


async def _rollout(args: argparse.Namespace, deployment: Deployment, out: Output, root: Path) -> None:
    config = deployment.config
    rollout = Rollout(deployment, configured_only=args.action != "stop")
    if args.action == "deploy":
        await rollout.deploy(root, args.skip_push)
        await audit.audit(config, deployment.hosts.values(), f"Rolled out app version {config.version}")
        out.info(
            f"{config.service} {config.version} takes the rollout's share on {', '.join(deployment.hosts)}"
        )
    elif args.action == "set":
        listed = None
        if args.allowlist is not None:
            listed = tuple(value.strip() for value in args.allowlist.split(",") if value.strip())
        await rollout.set(args.percent, listed)
        out.info("Rollout split set")
    else:
        await rollout.stop()
        await audit.audit(config, deployment.hosts.values(), "Ended the rollout")
        out.info("Rollout ended: every request goes to the live version")


async def _lock(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    if args.action == "status":
        out.line(await deployment.lock_status())
    elif args.action == "acquire":
        await deployment.acquire_lock(args.message)
        out.info(f"Deploy lock acquired on {deployment.primary.name}")
    else:
        await deployment.release_lock()
        out.info(f"Deploy lock released on {deployment.primary.name}")


async def _accessory(
    args: argparse.Namespace, deployment: Deployment, out: Output, root: Path
) -> int | Session:
    """`accessory ACTION NAME|all`; the actions that change an accessory hold the deploy lock."""
    accessories = Accessories(deployment.config, deployment.secrets, out, deployment.hosts, root)
    try:
        chosen = accessories.named(args.accessory_name)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    action = args.action
    if action == "remove" and not args.confirmed:
        _confirm(
            out,
            f"accessory remove {args.accessory_name} removes its containers, images and env files; its data "
            "stays. Are you sure?",
        )
    if action in ("boot", "reboot", "start", "stop", "restart", "remove"):
        async with deployment.lock(f"accessory {action} {args.accessory_name}"):
            await getattr(accessories, action)(chosen)
    elif action == "details":
        await accessories.print_each(chosen, accessory.details)
    elif action == "logs" and not args.follow:
        await accessories.print_each(chosen, lambda item: _accessory_logs(args, item))
    else:
        if args.accessory_name == "all":
            raise UsageError(f"accessory {action} acts on one accessory, not all")
        return await _accessory_attached(args, accessories, chosen[0])
    return 0


def _accessory_logs(args: argparse.Namespace, chosen: Accessory) -> str:
    narrowed = (args.lines, args.since, args.grep, args.grep_options)
    return accessory.logs(chosen, *narrowed, timestamps=not args.skip_timestamps, follow=args.follow)


async def _accessory_attached(
    args: argparse.Namespace, accessories: Accessories, chosen: Accessory
) -> int | Session:
    """`logs -f` and `exec` act on one accessory; those with the user's terminal return their Session."""
    if args.action == "logs":
        return accessories.attached(chosen, _accessory_logs(args, chosen))
    if not args.exec_command:
        raise UsageError("No command provided. You must specify a command to execute.")
    command = app_commands.joined(args.exec_command)
    if args.interactive:  # main() already refused it without a terminal
        return await accessories.exec_interactive(chosen, command, args.reuse)
    await accessories.exec(chosen, command, args.reuse)
    return 0


async def _proxy(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    if args.action == "boot":
        await deployment.boot_proxy()
    elif args.action == "reboot":
        await deployment.reboot_proxy()
    else:
        command = docker.proxy_logs() if args.action == "logs" else docker.proxy_details()
        await _on_each(deployment, out, lambda role, running: command, per_role=False)


async def _app(args: argparse.Namespace, deployment: Deployment, out: Output, root: Path) -> int | Session:
    config = deployment.config
    action = args.action
    if action == "boot":
        async with deployment.lock(f"Booting {config.version}"):
            await deployment.boot(config.version)
    elif action == "stop":
        await app_control.stop(deployment)
    elif action == "start":
        await app_control.start(deployment, config.version if args.app_version else None)
    elif action == "exec":
        return await _app_exec(args, deployment, out)
    elif action == "logs" and args.follow:
        host, role, running = await _primary_running(deployment)
        command = app_commands.logs(config, role, running, *_logs_narrowed(args), follow=True)
        return Session(host.name, config.ssh, command)
    elif action in ("maintenance", "live"):
        await _maintenance_or_live(args, deployment, out)
    elif action == "remove":
        await Housekeeping(deployment, _accessories(deployment, out, root)).remove_app()
    elif action == "stale_containers":
        await _stale_containers(args, deployment, out)
    else:
        commands = {
            "containers": lambda role, running: docker.containers(config, role),
            "details": lambda role, running: docker.containers(config, role),
            "version": lambda role, running: f"echo {shlex.quote(running or 'none')}",
            "logs": lambda role, running: (
                running and app_commands.logs(config, role, running, *_logs_narrowed(args))
            ),
        }
        await _on_each(deployment, out, commands[action])
    return 0


def _logs_narrowed(args: argparse.Namespace) -> tuple[int | None, str | None, str | None, str | None, bool]:
    return args.lines, args.since, args.grep, args.grep_options, not args.skip_timestamps


async def _app_exec(args: argparse.Namespace, deployment: Deployment, out: Output) -> int | Session:
    """`app exec`: in a new container of the running version (removed after), or with `--reuse` in the
    running one; on every selected host, or with `-i` on the primary one with this terminal."""
    config = deployment.config
    if not args.exec_command:
        raise UsageError("No command provided. You must specify a command to execute.")
    command = app_commands.joined(args.exec_command)
    try:
        extra_env = app_commands.parse_env(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    requested = config.version if args.app_version else None
    build = app_commands.exec_in_running if args.reuse else app_commands.exec_in_new

    def version(running: str | None) -> str | None:
        """The version to run: --version, else the running one; a new container falls back to `latest`."""
        return requested or running or (None if args.reuse else config.version)

    def line(role: Role, running: str | None, interactive: bool = False) -> str | None:
        chosen = version(running)
        return chosen and build(config, role, chosen, command, extra_env, interactive)

    def audited(role: Role, running: str | None) -> str:
        return f"Executed cmd '{command}' on app version {version(running)}"

    def log_in(host: Host) -> Awaitable[None]:
        """A new container's image may have to be pulled: as Kamal's, logged in to the registry first."""
        return prerequisites.log_in(host, config.registry, deployment.secrets)

    if not args.interactive:
        if not args.reuse:
            await deployment.each_host("registry login", log_in)
        await _on_each(deployment, out, line, audit_message=audited)
        return 0
    host, role, running = await _primary_running(deployment, required=args.reuse)
    if not args.reuse:
        await log_in(host)
    await host.run(audit.record_command(config, audited(role, running), role.name))
    out.info(f"Launching `{command}` on {host.name} ({role.name} {version(running)}) interactively")
    return Session(host.name, config.ssh, line(role, running, interactive=True))


async def _running_version(config: DeployConfig, host: Host, role: Role) -> str | None:
    return (await host.run(docker.current_version(config, role))).stdout.strip() or None


async def _primary_running(deployment: Deployment, required: bool = True) -> tuple[Host, Role, str | None]:
    """The primary host, its first selected role and the version running there (Kamal's primary host
    for interactive commands); DeployError when nothing runs there and `required`."""
    host = deployment.primary
    role = deployment.roles_on(host)[0]
    running = await _running_version(deployment.config, host, role)
    if running is None and required:
        raise DeployError(f"{host.name}: no {role.name} container is running (`pydeploy app containers`)")
    return host, role, running


async def _maintenance_or_live(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    """`app maintenance`: the proxy answers 503 (with --message) for every proxied role; `app live`
    undoes it."""
    config = deployment.config
    if args.action == "maintenance":
        drain = args.drain_timeout if args.drain_timeout is not None else config.drain_timeout
        message = "Maintenance mode" + (f": {args.message}" if args.message else "")

        def command(role: Role) -> str:
            return app_commands.maintenance(config, role, drain, args.message)
    else:
        message = "Live mode"

        def command(role: Role) -> str:
            return app_commands.live(config, role)

    async with deployment.lock(message):
        for name, host in deployment.hosts.items():
            for role in (role for role in deployment.roles_on(host) if role.proxy is not None):
                await host.run(audit.record_command(config, message, role.name))
                await host.run(command(role))
                out.info(f"{name} ({role.name}): {message}")


async def _stale_containers(args: argparse.Namespace, deployment: Deployment, out: Output) -> None:
    """Running containers of a role other than its current version (a deploy that died half way)."""
    config = deployment.config
    for name, host in deployment.hosts.items():
        for role in deployment.roles_on(host):
            current = await _running_version(config, host, role)
            listing = (await host.run(docker.containers(config, role))).stdout.splitlines()
            rows = [row.split("\t") for row in listing]
            stale = [row[1] for row in rows if len(row) > 2 and row[2].startswith("Up") and row[1] != current]
            for version in stale:
                if args.stop:
                    out.line(f"{name}: stopping stale container for role {role.name} with version {version}")
                    await host.run(docker.stop(config, role, version))
                else:
                    out.line(
                        f"{name}: detected stale container for role {role.name} with version {version} "
                        "(`pydeploy app stale_containers --stop` stops it)"
                    )


def _accessories(deployment: Deployment, out: Output, root: Path) -> Accessories:
    return Accessories(deployment.config, deployment.secrets, out, deployment.hosts, root)


async def _server(args: argparse.Namespace, deployment: Deployment, out: Output) -> int | Session:
    """`server exec CMD`: on every selected host through its login shell, or with -i on the primary host."""
    if not args.exec_command:
        raise UsageError("No command provided. You must specify a command to execute.")
    command = app_commands.joined(args.exec_command)
    if args.interactive:
        await deployment.primary.run(audit.record_command(deployment.config, f"Executed cmd '{command}'"))
        return Session(deployment.primary.name, deployment.config.ssh, command)
    await _on_each(
        deployment,
        out,
        lambda role, running: command,
        per_role=False,
        audit_message=lambda role, running: f"Executed cmd '{command}'",
    )
    return 0


async def _housekeeping(args: argparse.Namespace, deployment: Deployment, out: Output, root: Path) -> None:
    config = deployment.config
    if args.command == "prune":
        retain = getattr(args, "retain", None) or config.retain_containers
        chosen = {"all": (True, True), "containers": (True, False), "images": (False, True)}[args.action]
        await Housekeeping(deployment, _accessories(deployment, out, root)).prune(*chosen, retain)
    elif args.command == "remove":
        if not args.confirmed:
            _confirm(out, "This will remove all containers and images. Are you sure?")
        await Housekeeping(deployment, _accessories(deployment, out, root)).remove_all()
    else:
        await _on_each(deployment, out, lambda role, running: docker.proxy_details(), per_role=False)
        await _on_each(deployment, out, lambda role, running: docker.containers(config, role))
        await _accessories(deployment, out, root).print_each(config.accessories, accessory.details)


def _confirm(out: Output, question: str) -> None:
    """Ask `y/N` on a terminal; without one, refuse: only `-y` says yes for a script."""
    if not sys.stdin.isatty():
        raise UsageError(f"{question.split('.')[0]}: no terminal to confirm on; add -y (--confirmed)")
    out.stop_live()
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise UsageError("Not confirmed: nothing was removed")
    out.start_live()


AuditMessage = Callable[[Role | None, str | None], str]


async def _on_each(
    deployment: Deployment,
    out: Output,
    command_for: Callable[[Role | None, str | None], str | None],
    per_role: bool = True,
    audit_message: AuditMessage | None = None,
) -> None:
    """Run a command on every selected host (per selected role there, given the role's running version)
    and print its output under the host's name; `command_for` gives None when there is nothing to run
    (no running container). With `audit_message`, each run is recorded in the host's audit log first."""
    config = deployment.config
    for name, host in deployment.hosts.items():
        roles = deployment.roles_on(host) if per_role else [None]
        for role in roles:
            running = None if role is None else await _running_version(config, host, role)
            label = name if role is None else f"{name} ({role.name})"
            command = command_for(role, running)
            out.line(f"{label}:")
            if command is None:
                out.line("(no running container)")
                continue
            if audit_message is not None:
                await host.run(audit.record_command(config, audit_message(role, running), role and role.name))
            result = await host.run(command, check=False)
            out.line(result.output.rstrip() or "(nothing)")
            if result.status != 0:
                raise DeployError(f"{name}: `{command}` failed (exit status {result.status})")
