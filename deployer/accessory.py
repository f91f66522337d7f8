"""Accessories (spec 13.6): long-lived companions of the app (a database, a cache), one container per host.

As in Kamal, the container is named by the accessory's `service` (default `<app service>-<name>`) and runs
on the deploy network (`pydeploy` unless `network` is set), so the app reaches it by that name
(`testapp-db:5432`). Deploys never touch it: `setup` and `accessory boot` create it where it is missing,
only `accessory reboot` replaces it.

Labels: Kamal's `service=<accessory service>`, which every command here finds the container by (so an
accessory Kamal booted is recognised too), and pydeploy's own `pydeploy.app=<app service[-destination]>` and
`pydeploy.accessory=<name>`, which say that pydeploy made it and for what.

On the host, below the SSH user's home: uploaded files at `<accessory service>/<remote path>`, directories
at `<accessory service>/<local>` (absolute ones as they are), the secret env vars in
`.kamal/apps/<app>/env/accessories/<name>.env`. Unlike Kamal, `remove` leaves the files and directories
where they are and names them: a database must not vanish on a typo.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from deployer import audit, docker, erb, prerequisites
from deployer.config import (
    Accessory,
    DeployConfig,
    ProxySettings,
)
from deployer.errors import DeployError
from deployer.interactive import Session, require_tty
from deployer.output import Output
from deployer.remote import Completed, Host, RemoteError

DEFAULT_FILE_MODE = "755"  # Kamal's, for uploaded files without a `mode`


# -- the command lines (pure functions, quoted for sh) ------------------------------------------------------


def network(accessory: Accessory) -> str:
    return accessory.network or docker.NETWORK


def env_file_path(config: DeployConfig, accessory: Accessory) -> str:
    return f".kamal/apps/{config.service_with_destination}/env/accessories/{accessory.name}.env"


def env_file(accessory: Accessory, secret_values: Mapping[str, str]) -> bytes:
    """The accessory's secret env vars, one `KEY=value` line each, escaped as the app's env files are."""
    return docker.secret_env_file(accessory.env, secret_values)


def environment(accessory: Accessory, secret_values: Mapping[str, str]) -> dict[str, str]:
    """Every env var the container gets from the config (clear and secret): what `.erb` files see in ENV."""
    secrets = {name: secret_values[source] for name, source in accessory.env.secret_sources().items()}
    return {**accessory.env.clear, **secrets}


def file_path(accessory: Accessory, remote: str) -> str:
    """Where an uploaded file lives on the host, relative to the SSH user's home."""
    return f"{accessory.service}/{remote.lstrip('/')}"


@dataclass(frozen=True)
class Directory:
    """One of `directories` ("local:remote[:options]"); `host` is a shell word, `"$PWD"/...` if relative."""

    host: str
    remote: str
    options: str | None


def directories(accessory: Accessory) -> list[Directory]:
    found = []
    for entry in accessory.directories:
        local, _, rest = entry.partition(":")
        remote, _, options = rest.partition(":")
        host = quote(local) if local.startswith("/") else f'"$PWD"/{quote(f"{accessory.service}/{local}")}'
        found.append(Directory(host, remote, options or None))
    return found


def make_directories(accessory: Accessory) -> str | None:
    """`mkdir -p` of the directories, or None when there are none."""
    paths = [directory.host for directory in directories(accessory)]
    return f"mkdir -p {' '.join(paths)}" if paths else None


def volumes(accessory: Accessory) -> list[str]:
    """`--volume` arguments: the configured volumes, then one per uploaded file and per directory."""
    args = [f"--volume {quote(volume)}" for volume in accessory.volumes]
    for item in accessory.files:
        args.append(f'--volume "$PWD"/{quote(f"{file_path(accessory, item.remote)}:{item.remote}")}')
    for directory in directories(accessory):
        suffix = f":{directory.options}" if directory.options else ""
        args.append(f"--volume {directory.host}{quote(f':{directory.remote}{suffix}')}")
    return args


def labels(config: DeployConfig, accessory: Accessory) -> dict[str, str]:
    """Kamal's `service` label, pydeploy's two, then the accessory's own."""
    return {
        "service": accessory.service,
        "pydeploy.app": config.service_with_destination,
        "pydeploy.accessory": accessory.name,
        **accessory.labels,
    }


def _env(config: DeployConfig, accessory: Accessory) -> list[str]:
    clear = [f"--env {quote(f'{key}={value}')}" for key, value in accessory.env.clear.items()]
    return [*clear, f"--env-file {quote(env_file_path(config, accessory))}"]


def _options_without_restart(accessory: Accessory) -> list[str]:
    """The accessory's docker options for a throw-away container, where a restart policy makes no sense."""
    return docker.options({key: value for key, value in accessory.options.items() if key != "restart"})


def run(config: DeployConfig, accessory: Accessory, host: str) -> str:
    """`docker run` of the accessory's container (spec 13.6 step 4): secrets only through the env file."""
    restart = "" if "restart" in accessory.options else " --restart unless-stopped"  # an option replaces it
    parts = [
        f"docker run --name {quote(accessory.service)} --detach{restart}",
        f"--network {quote(network(accessory))}",
        *docker.logging_options(config.logging),
    ]
    if accessory.port:
        parts.append(f"--publish {quote(accessory.port)}")  # "3306" was read as "3306:3306"
    parts.append(f"--env KAMAL_HOST={quote(host)}")
    parts += _env(config, accessory)
    parts += volumes(accessory)
    parts += [f"--label {quote(f'{name}={value}')}" for name, value in labels(config, accessory).items()]
    parts += docker.options(accessory.options)
    parts.append(quote(accessory.image))
    if accessory.cmd:
        parts.append(accessory.cmd)
    return " ".join(parts)


def _filter(accessory: Accessory) -> str:
    return f"--filter {quote(f'label=service={accessory.service}')}"


def existing(accessory: Accessory) -> str:
    """The ids of the accessory's containers, running or not: boot skips a host where there is one."""
    return f"docker ps --all --quiet {_filter(accessory)}"


def running_id(accessory: Accessory) -> str:
    return f"docker ps --quiet --filter status=running {_filter(accessory)}"


def pull(accessory: Accessory) -> str:
    return f"docker image pull {quote(accessory.image)}"


def start(accessory: Accessory) -> str:
    return f"docker container start {quote(accessory.service)}"


def stop(accessory: Accessory) -> str:
    return f"docker container stop {quote(accessory.service)}"


def restart(accessory: Accessory) -> str:
    return f"docker container restart {quote(accessory.service)}"


def remove_container(accessory: Accessory) -> str:
    """Stop and remove every container of the accessory (by its label, as Kamal's prune finds them)."""
    return f"{existing(accessory)} | xargs --no-run-if-empty docker container rm --force"


def remove_image(accessory: Accessory) -> str:
    """Not forced: an image another container still uses (the app's, say) stays."""
    return f"docker image rm {quote(accessory.image)}"


def remove_env_file(config: DeployConfig, accessory: Accessory) -> str:
    return f"rm -f {quote(env_file_path(config, accessory))}"


def kept_data(accessory: Accessory) -> str:
    """Print each data path of the accessory that exists on the host: what `remove` leaves."""
    paths = [directory.host for directory in directories(accessory)]
    paths.append(f'"$PWD"/{quote(accessory.service)}')
    return f'for path in {" ".join(paths)}; do [ -e "$path" ] && echo "$path"; done; true'


def details(accessory: Accessory) -> str:
    return f"docker ps --all {_filter(accessory)}"


def logs(accessory: Accessory, *narrowed: object, **options: object) -> str:
    """`docker logs` of the accessory (docker.container_logs' filters, as `app logs`)."""
    return docker.container_logs(accessory.service, *narrowed, **options)


def exec_new(config: DeployConfig, accessory: Accessory, command: str, interactive: bool = False) -> str:
    """`command` (shell words, as Kamal joins them) in a new container of the accessory's image, removed
    after, with the accessory's network, env, volumes and options."""
    parts = ["docker run", "-it" if interactive else "", "--rm", f"--network {quote(network(accessory))}"]
    parts += _env(config, accessory)
    parts += volumes(accessory)
    parts += _options_without_restart(accessory)
    parts += [quote(accessory.image), command]
    return " ".join(part for part in parts if part)


def exec_existing(accessory: Accessory, command: str, interactive: bool = False) -> str:
    flags = " -it" if interactive else ""
    return f"docker exec{flags} {quote(accessory.service)} {command}"


def proxy_deploy(config: DeployConfig, accessory: Accessory, target: str) -> str:
    """`kamal-proxy deploy <accessory service>` of its container `target`, with its `proxy` settings (no
    error pages: those are the app's, per version)."""
    proxy = accessory.proxy or ProxySettings()
    targets = [f"{target}:{proxy.app_port}"]
    return docker.proxy_deploy_command(
        accessory.service, targets, proxy, config, None, role_name=accessory.name
    )


def proxy_remove(accessory: Accessory) -> str:
    return f"docker exec {docker.PROXY_CONTAINER} {docker.PROXY_PROGRAM} remove {quote(accessory.service)}"


# -- running them on the hosts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    path: str
    content: bytes
    mode: str


class Accessories:
    """The accessory commands on the selected hosts; connections are the caller's (`hosts`)."""

    def __init__(
        self,
        config: DeployConfig,
        secret_values: Mapping[str, str],
        out: Output,
        hosts: Mapping[str, Host],
        root: Path,
    ) -> None:
        self.config = config
        self.secrets = secret_values
        self.out = out
        self.hosts = hosts
        self.root = root

    def named(self, name: str) -> tuple[Accessory, ...]:
        """`all` or one accessory's name; ConfigError for a name the config does not have."""
        return self.config.accessories if name == "all" else (self.config.accessory(name),)

    def hosts_of(self, accessory: Accessory) -> list[Host]:
        return [self.hosts[name] for name in accessory.hosts if name in self.hosts]

    # -- boot and replace ----------------------------------------------------------------------------

    async def boot(self, accessories: Iterable[Accessory]) -> None:
        """Boot each accessory where it has no container yet (an existing one, even stopped, is kept)."""
        await self._each_accessory(accessories, self._boot)

    async def _boot(self, accessory: Accessory) -> None:
        uploads = self.uploads(accessory)
        booted = []
        for host in self.hosts_of(accessory):
            if (await self._run(host, accessory, existing(accessory))).stdout.strip():
                booted.append(host.name)
        if booted:
            self.out.info(
                f"Skipping booting {accessory.name} on {', '.join(booted)}: a container already exists "
                "(`pydeploy accessory reboot` replaces it)"
            )
        hosts = [host for host in self.hosts_of(accessory) if host.name not in booted]
        await self._each(hosts, f"pull {accessory.name}", lambda host: self._prepare(host, accessory))
        await self._each(hosts, f"boot {accessory.name}", lambda host: self._launch(host, accessory, uploads))

    async def reboot(self, accessories: Iterable[Accessory]) -> None:
        """Pull first everywhere (a bad image leaves the old container running), then replace."""
        await self._each_accessory(accessories, self._reboot)

    async def _reboot(self, accessory: Accessory) -> None:
        uploads = self.uploads(accessory)
        hosts = self.hosts_of(accessory)
        await self._each(hosts, f"pull {accessory.name}", lambda host: self._prepare(host, accessory))

        async def replace(host: Host) -> None:
            await self._unroute(host, accessory)
            await self._run(host, accessory, remove_container(accessory))
            await self._launch(host, accessory, uploads)

        await self._each(hosts, f"reboot {accessory.name}", replace)

    async def _prepare(self, host: Host, accessory: Accessory) -> None:
        """Registry login, the network, the image: everything that can fail before anything changes."""
        await self._login(host, accessory)
        await self._run(host, accessory, docker.network(network(accessory)))
        pulled = await host.run(pull(accessory), check=False)
        if pulled.status != 0:
            raise DeployError(
                f"{host.name}: could not pull {accessory.image} for accessory {accessory.name}: "
                f"{pulled.output.strip()[-500:]}\nNothing was changed for {accessory.name} on {host.name}."
            )

    async def _login(self, host: Host, accessory: Accessory) -> None:
        await prerequisites.log_in(host, accessory.registry or self.config.registry, self.secrets)

    async def _launch(self, host: Host, accessory: Accessory, uploads: list[Upload]) -> None:
        mkdir = make_directories(accessory)
        if mkdir:
            await self._run(host, accessory, mkdir)
        for upload in uploads:
            await host.write_file(upload.path, upload.content, upload.mode)
        await host.write_file(env_file_path(self.config, accessory), env_file(accessory, self.secrets))
        await self._record(host, accessory, f"Booted {accessory.name} accessory")
        await self._run(host, accessory, run(self.config, accessory, host.name))
        await self._route(host, accessory)

    def uploads(self, accessory: Accessory) -> list[Upload]:
        """The files to upload, read (and `.erb` ones rendered with the accessory's env in ENV) here before
        any host is touched."""
        environ = {**os.environ, **environment(accessory, self.secrets)}
        uploads = []
        for item in accessory.files:
            local = self.root / item.local
            where = f"accessories.{accessory.name}.files"
            if not local.is_file():
                raise DeployError(f"{where}: {item.local} is not a file")
            content = local.read_bytes()
            if item.local.endswith(".erb"):
                try:
                    content = erb.render(content.decode(), item.local, environ).encode()
                except (erb.TemplateError, UnicodeDecodeError) as exc:
                    raise DeployError(f"{where}: cannot render {item.local}: {exc}") from None
            uploads.append(Upload(file_path(accessory, item.remote), content, item.mode or DEFAULT_FILE_MODE))
        return uploads

    async def _route(self, host: Host, accessory: Accessory) -> None:
        """With `proxy`: the proxy (booted where missing) sends the accessory's hosts to its container."""
        if accessory.proxy is None:
            return
        await prerequisites.boot_proxy(host, self.config)
        target = (await self._run(host, accessory, running_id(accessory))).stdout.strip()
        if not target:
            raise DeployError(f"{host.name}: accessory {accessory.name} is not running, so not routed")
        await self._run(host, accessory, proxy_deploy(self.config, accessory, target))

    async def _unroute(self, host: Host, accessory: Accessory) -> None:
        if accessory.proxy is not None:
            await host.run(proxy_remove(accessory), check=False)

    # -- start, stop, remove ---------------------------------------------------------------------------

    async def start(self, accessories: Iterable[Accessory]) -> None:
        async def action(host: Host, accessory: Accessory) -> None:
            await self._record(host, accessory, f"Started {accessory.name} accessory")
            await self._run(host, accessory, start(accessory))
            await self._route(host, accessory)

        await self._on_hosts(accessories, "start", action)

    async def stop(self, accessories: Iterable[Accessory]) -> None:
        async def action(host: Host, accessory: Accessory) -> None:
            await self._record(host, accessory, f"Stopped {accessory.name} accessory")
            await self._unroute(host, accessory)
            await self._run(host, accessory, stop(accessory))

        await self._on_hosts(accessories, "stop", action)

    async def restart(self, accessories: Iterable[Accessory]) -> None:
        async def action(host: Host, accessory: Accessory) -> None:
            await self._record(host, accessory, f"Restarted {accessory.name} accessory")
            await self._run(host, accessory, restart(accessory))
            await self._route(host, accessory)

        await self._on_hosts(accessories, "restart", action)

    async def remove(self, accessories: Iterable[Accessory]) -> None:
        """Container, image and env file go; the data stays, and is named."""
        kept: dict[str, list[str]] = {}

        async def action(host: Host, accessory: Accessory) -> None:
            await self._record(host, accessory, f"Removed {accessory.name} accessory (its data kept)")
            await self._unroute(host, accessory)
            await self._run(host, accessory, remove_container(accessory))
            image = await host.run(remove_image(accessory), check=False)
            if image.status != 0:
                why = "another container uses it" if "is using" in image.output else image.output.strip()
                self.out.info(f"{host.name}: kept the image {accessory.image}: {why[-300:]}")
            await self._run(host, accessory, remove_env_file(self.config, accessory))
            paths = (await self._run(host, accessory, kept_data(accessory))).stdout.split("\n")
            kept[f"{accessory.name} on {host.name}"] = [path for path in paths if path]

        try:
            await self._on_hosts(accessories, "remove", action)
        finally:
            for where, paths in kept.items():
                if paths:
                    self.out.line(f"Kept the data of {where} (pydeploy never deletes it): {', '.join(paths)}")
                else:
                    self.out.line(f"No data of {where} was left on the host")
            if any(kept.values()):
                self.out.line("Delete it with `rm -rf` on the host once you are sure (Kamal would have).")

    # -- looking at them -------------------------------------------------------------------------------

    async def print_each(self, accessories: Iterable[Accessory], command: Callable[[Accessory], str]) -> None:
        """Run `command` on each accessory's hosts, one after another, printing the output under its name;
        a command that fails is an error after its output is shown."""
        failed = []
        for accessory in accessories:
            for host in self.hosts_of(accessory):
                line = command(accessory)
                result = await self._run(host, accessory, line, check=False)
                self.out.line(f"{accessory.name} on {host.name}:")
                self.out.line(result.output.rstrip() or "(nothing)")
                if result.status != 0:
                    failed.append(f"{host.name}: `{line}` failed (exit status {result.status})")
        if failed:
            raise DeployError("\n".join(failed))

    async def exec(self, accessory: Accessory, command: str, reuse: bool) -> None:
        """`command` on every host of the accessory: in its running container (`reuse`) or a new one."""
        for host in self.hosts_of(accessory):
            if not reuse:
                await self._login(host, accessory)
            await self._record(host, accessory, f"Executed cmd '{command}' on {accessory.name} accessory")
        line = exec_existing(accessory, command) if reuse else exec_new(self.config, accessory, command)
        await self.print_each((accessory,), lambda _: line)

    def attached(self, accessory: Accessory, command: str) -> Session:
        """`command` on the accessory's first selected host with the user's terminal, run by the caller once
        pydeploy's own connections and output are closed (`logs -f` streams until Ctrl-C)."""
        return Session(self.first_host(accessory).name, self.config.ssh, command)

    async def exec_interactive(self, accessory: Accessory, command: str, reuse: bool) -> Session:
        """`exec -i`, in the running container (`reuse`) or a new one (logged in to its registry first)."""
        require_tty()
        if reuse:
            return self.attached(accessory, exec_existing(accessory, command, interactive=True))
        await self._login(self.first_host(accessory), accessory)
        return self.attached(accessory, exec_new(self.config, accessory, command, interactive=True))

    def first_host(self, accessory: Accessory) -> Host:
        hosts = self.hosts_of(accessory)
        if not hosts:
            raise DeployError(f"None of accessory {accessory.name}'s hosts is selected")
        return hosts[0]

    # -- helpers ---------------------------------------------------------------------------------------

    async def _record(self, host: Host, accessory: Accessory, message: str) -> None:
        """A line in the host's audit log (Kamal's words)."""
        await self._run(host, accessory, audit.record_command(self.config, message))

    async def _run(self, host: Host, accessory: Accessory, command: str, check: bool = True) -> Completed:
        try:
            return await host.run(command, check=check)
        except RemoteError as exc:
            raise DeployError(f"accessory {accessory.name}: {exc}") from None

    async def _each(self, hosts: list[Host], step: str, action: Callable[[Host], Awaitable[None]]) -> None:
        """`action` on every host at once; the first failure is raised after all have ended."""

        async def timed(host: Host) -> None:
            with self.out.step(host.name, step):
                await action(host)

        results = await asyncio.gather(*(timed(host) for host in hosts), return_exceptions=True)
        for result in results:
            if isinstance(result, RemoteError):
                raise DeployError(f"{step}: {result}")
            if isinstance(result, BaseException):
                raise result

    async def _on_hosts(
        self,
        accessories: Iterable[Accessory],
        step: str,
        action: Callable[[Host, Accessory], Awaitable[None]],
    ) -> None:
        async def each(accessory: Accessory) -> None:
            await self._each(
                self.hosts_of(accessory), f"{step} {accessory.name}", lambda host: action(host, accessory)
            )

        await self._each_accessory(accessories, each)

    async def _each_accessory(
        self, accessories: Iterable[Accessory], action: Callable[[Accessory], Awaitable[None]]
    ) -> None:
        """One accessory after another; one that fails does not stop the others, and all failures are
        raised together at the end."""
        failures = []
        for accessory in accessories:
            try:
                await action(accessory)
            except DeployError as exc:
                failures.append(str(exc))
        if failures:
            raise DeployError("\n".join(failures))
