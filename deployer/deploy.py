"""The deploy, in Kamal's order (spec 7.2), on every host in parallel.

1. build and push the image here (skipped with --skip-push);
2. on every host: log in to the registry and pull it; a host that cannot is found before any traffic moves;
3. take the deploy lock on the primary host;
4. boot the proxy container where it is missing (it is never replaced by a deploy);
5. start the new containers on every host, and wait until each answers its health check: only when
   every host has a healthy new container does any host switch traffic;
6. `pyproxy deploy` on every host: the proxy checks the new container again, switches, drains the old
   one and only then returns; the old container is stopped;
7. tag the version `latest`, prune old containers (keeping `retain_containers` for rollbacks);
8. release the lock.
A failure at any step stops the deploy and says where and why; hosts that had not switched keep
serving their previous version.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import getpass
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from deployer import docker
from deployer.config import DeployConfig, Role
from deployer.output import Output
from deployer.remote import Host, RemoteError

HEALTH_POLL = 0.5


class DeployError(Exception):
    """A step failed; the message is the explanation the user gets (host, step, cause, what to check)."""


class Deployment:
    def __init__(
        self,
        config: DeployConfig,
        secret_values: dict[str, str],
        out: Output,
        hosts: list[str] | None = None,
        roles: list[str] | None = None,
    ) -> None:
        self.config = config
        self.secrets = secret_values
        self.out = out
        self.roles = [role for role in config.roles if roles is None or role.name in roles]
        names = hosts or config.all_hosts()
        self.hosts = {name: Host(name, config.ssh, out.command) for name in names}

    # -- the commands -------------------------------------------------------------------------

    async def setup(self, root: Path, skip_push: bool) -> None:
        """First deploy to fresh hosts: Docker checked, the network and the proxy created, then a deploy."""
        await self._each_host("docker", self._ensure_docker)
        await self.deploy(root, skip_push)

    async def deploy(self, root: Path, skip_push: bool) -> None:
        version = self.config.version
        if not skip_push:
            self.build_and_push(root)
        await self._each_host("pull", lambda host: self._pull(host, version))
        async with self.lock(f"Deploying {version}"):
            await self.boot_proxy()
            await self.boot(version)
            await self._each_host("prune", self._prune)

    async def redeploy(self, root: Path, skip_push: bool) -> None:
        """A deploy without proxy boot and prune (the proxy is known to run)."""
        version = self.config.version
        if not skip_push:
            self.build_and_push(root)
        await self._each_host("pull", lambda host: self._pull(host, version))
        async with self.lock(f"Redeploying {version}"):
            await self.boot(version)

    async def rollback(self, version: str | None) -> str:
        """Back to `version` (default: the newest stopped one older than what runs), from the containers
        kept on the hosts: no build, no pull."""
        async with self.lock("Rollback"):
            if version is None:
                version = await self.previous_version()
            for role in self.roles:
                for name in role.hosts:
                    if name not in self.hosts:
                        continue
                    found = await self.hosts[name].run(docker.container_id(self.config, role, version))
                    if not found.stdout.strip():
                        raise DeployError(
                            f"The app version '{version}' is not available as a container on {name} "
                            "(`pydeploy app containers` lists the versions that are)."
                        )
            try:
                await self.boot(version)
            except DeployError as exc:
                raise DeployError(f"Rollback to {version} failed: {exc}") from None
        return version

    async def previous_version(self) -> str:
        """The version served before the current one on the first host: what `rollback` goes back to.

        Taken from the versions the host switched to (a failed deploy never switched, so it is never
        picked)."""
        host = self.primary
        history = (await host.run(docker.read_history(self.config))).stdout.split()
        self.out.info(f"Versions {host.name} has served, oldest first: {', '.join(history) or 'none'}")
        current = history[-1] if history else None
        earlier = [version for version in reversed(history) if version != current]
        if not earlier:
            raise DeployError(f"No version to roll back to: only {current or 'nothing'} ran on {host.name}.")
        return earlier[0]

    async def running_versions(self) -> dict[str, str]:
        """The version each host's first role runs, as far as the host can be asked (best effort)."""

        async def ask(host: Host) -> str:
            role = next((role for role in self.roles if host.name in role.hosts), self.roles[0])
            try:
                async with asyncio.timeout(15):
                    found = await host.run(docker.current_version(self.config, role), check=False)
            except (RemoteError, TimeoutError):
                return "unreachable"
            return found.stdout.strip() or "nothing"

        answers = await asyncio.gather(*(ask(host) for host in self.hosts.values()))
        return dict(zip(self.hosts, answers, strict=True))

    # -- building ---------------------------------------------------------------------------

    def build_and_push(self, root: Path) -> None:
        """docker build (from a clean export of HEAD unless builder.context is set) and push, here."""
        config = self.config
        builder = config.builder
        tags = [docker.image(config, config.version), docker.image(config, "latest")]
        self._registry_login_here()
        command = ["docker", "build", "--label", f"service={config.service}", "-f", builder.dockerfile]
        for tag in tags:
            command += ["-t", tag]
        for key, value in builder.args.items():
            command += ["--build-arg", f"{key}={value}"]
        if len(builder.arch) == 1:
            command += ["--platform", f"linux/{builder.arch[0]}"]
        with self.out.step("local", "build"):
            if builder.context is None:
                archive = subprocess.run(
                    ["git", "-C", str(root), "archive", "--format=tar", "HEAD"],
                    capture_output=True,
                    check=False,
                )
                if archive.returncode != 0:
                    raise DeployError(
                        f"Could not export HEAD for the build: {archive.stderr.decode().strip()}"
                    )
                self._local([*command, "-"], stdin=archive.stdout)
            else:
                self._local([*command, str(root / builder.context)])
        with self.out.step("local", "push"):
            for tag in tags:
                self._local(["docker", "push", tag])

    def _registry_login_here(self) -> None:
        registry = self.config.registry
        if registry.username is None or registry.password is None:
            return
        command = ["docker", "login", "-u", registry.username.resolve(self.secrets), "--password-stdin"]
        if registry.server:
            command.insert(2, registry.server)
        self._local(command, stdin=registry.password.resolve(self.secrets).encode())

    def _local(self, command: list[str], stdin: bytes | None = None) -> None:
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
        if self.out.verbose:
            self.out.line(f"  local $ {' '.join(command)}")
            self.out.line(done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace"))
        if done.returncode != 0:
            raise DeployError(
                f"`{' '.join(command)}` failed here (exit status {done.returncode}):\n"
                + done.stderr.decode(errors="replace").strip()[-3000:]
            )

    # -- on the hosts -------------------------------------------------------------------------

    async def _ensure_docker(self, host: Host) -> None:
        found = await host.run("docker version --format '{{.Server.Version}}'", check=False)
        if found.status == 0:
            return
        installed = await host.run(
            'command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && '
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null && "
            "(systemctl enable --now docker 2>/dev/null || service docker start)",
            check=False,
        )
        if installed.status != 0:
            raise DeployError(
                f"Docker is not installed on {host.name} and could not be installed there (it needs apt and "
                f"root): {installed.output.strip()[-500:]}"
            )

    async def _login(self, host: Host) -> None:
        registry = self.config.registry
        if registry.username is None or registry.password is None:
            return
        command = docker.login(registry.server, registry.username.resolve(self.secrets))
        try:
            await host.run(command, registry.password.resolve(self.secrets).encode())
        except RemoteError as exc:
            raise DeployError(
                f"{host.name}: the registry {registry.server or 'Docker Hub'} refused the login: "
                f"{exc.output.strip()[-500:]}\nCheck registry.username and the password secret."
            ) from None

    async def _pull(self, host: Host, version: str) -> None:
        await self._login(host)
        try:
            await host.run(docker.pull(self.config, version))
        except RemoteError as exc:
            raise DeployError(
                f"{host.name}: could not pull {docker.image(self.config, version)}: "
                f"{exc.output.strip()[-500:]}\n"
                "Was it built and pushed (drop --skip-push), and is --version right?"
            ) from None

    async def boot_proxy(self) -> None:
        proxied = {name for role in self.roles if role.proxy is not None for name in role.hosts}

        async def boot(host: Host) -> None:
            await host.run(docker.network())
            if host.name in proxied:
                await host.run(docker.run_proxy(self.config))

        await self._each_host("proxy boot", boot)

    async def reboot_proxy(self) -> None:
        async def reboot(host: Host) -> None:
            await host.run(docker.remove_proxy())

        await self._each_host("proxy remove", reboot)
        await self.boot_proxy()

    async def boot(self, version: str) -> None:
        """Start `version` everywhere, wait for health everywhere, then switch everywhere (spec 8.2)."""
        config = self.config
        started: dict[tuple[str, str], tuple[str, str | None]] = {}

        async def start(host: Host, role: Role) -> None:
            old = (await host.run(docker.current_version(config, role))).stdout.strip() or None
            # The old container by name; the running one of this very version is moved aside first.
            replaced = docker.replaced_name(config, role, version)
            old_name = replaced if old == version else config.container_name(role, old) if old else None
            env_file = docker.env_file(config, role, self.secrets)
            await host.write_file(docker.env_file_path(config, role), env_file)
            await host.run(docker.rename_existing(config, role, version, replaced))
            await host.run(docker.run_app(config, role, version, host.name))
            container = (await host.run(docker.container_id(config, role, version))).stdout.strip()
            if not container:
                raise DeployError(f"Failed to get the new {role.name} container on {host.name}: did it boot?")
            started[host.name, role.name] = (container, old_name)
            if role.proxy is not None:
                await self._wait_healthy(host, role, container, version)

        try:
            await self._each_role("start new container", start)
        except BaseException:
            await self._stop_new(version, started)
            raise

        switched: list[str] = []

        async def switch(host: Host, role: Role) -> None:
            container, old_name = started[host.name, role.name]
            if role.proxy is not None:
                try:
                    await host.run(docker.proxy_deploy(config, role, container))
                except RemoteError as exc:
                    await host.run(docker.stop(config, role, version), check=False)  # not routed: stop it
                    raise DeployError(self._explain_switch(host, role, exc.output)) from None
            switched.append(host.name)
            if old_name:
                timeout = None if role.proxy is not None else config.drain_timeout
                await host.run(docker.stop_named(old_name, timeout))
            await host.run(docker.tag_latest(config, version))
            await host.run(docker.record_version(config, version))

        try:
            await self._each_role("switch traffic", switch)
        except DeployError as exc:
            moved = ", ".join(dict.fromkeys(switched)) or "none"
            raise DeployError(
                f"{exc}\nHosts that switched to {version}: {moved}; the others serve what they did before."
            ) from None

    async def _wait_healthy(self, host: Host, role: Role, container: str, version: str) -> None:
        """Poll the new container's health check from the proxy container, up to deploy_timeout."""
        check = role.proxy.healthcheck
        url = f"http://{container}:{role.proxy.app_port}{check.path}"
        probe = f"docker exec {docker.PROXY_CONTAINER} python3 -c " + quote(
            "import sys, urllib.request\n"
            "try:\n"
            f"    code = urllib.request.urlopen({url!r}, timeout={check.timeout}).status\n"
            "except Exception as exc:\n"
            "    print(getattr(exc, 'code', None) or exc); sys.exit(1)\n"
            "print(code); sys.exit(0 if 200 <= code < 300 else 1)\n"
        )
        deadline = asyncio.get_running_loop().time() + self.config.deploy_timeout
        last = "no answer"
        while True:
            result = await host.run(probe, check=False)
            if result.status == 0:
                return
            last = result.output.strip().splitlines()[-1] if result.output.strip() else last
            if asyncio.get_running_loop().time() >= deadline:
                logs = (await host.run(docker.logs(self.config, role, version, 20), check=False)).stdout
                raise DeployError(self._explain_unhealthy(host, role, f"last health check: {last}\n{logs}"))
            await asyncio.sleep(HEALTH_POLL)

    def _explain_switch(self, host: Host, role: Role, output: str) -> str:
        """Why `pyproxy deploy` refused: a health check (explained), or what the proxy said."""
        if "health" in output.lower():
            return self._explain_unhealthy(host, role, output)
        return f"{host.name}: the proxy refused to switch {role.name}: {output.strip()[-1000:]}"

    def _explain_unhealthy(self, host: Host, role: Role, detail: str) -> str:
        proxy = role.proxy
        return (
            f"{host.name}: the new {role.name} container never became healthy within "
            f"{self.config.deploy_timeout}s (GET {proxy.healthcheck.path} on port {proxy.app_port} must "
            f"answer 2xx).\n{detail.strip()}\n"
            "Likely causes: proxy.app_port is not the port the app listens on; the app redirects "
            f"{proxy.healthcheck.path} (e.g. to HTTPS) or needs a Host it does not get; the app binds "
            "127.0.0.1 instead of 0.0.0.0; the app boots slower than deploy_timeout.\n"
            f"{host.name} still serves its previous version."
        )

    async def _stop_new(self, version: str, started: dict[tuple[str, str], tuple[str, str | None]]) -> None:
        roles = {role.name: role for role in self.roles}
        for (name, role_name), _ in started.items():
            host = self.hosts[name]
            await host.run(docker.stop(self.config, roles[role_name], version), check=False)

    async def _prune(self, host: Host) -> None:
        for role in self.roles:
            if host.name in role.hosts:
                await host.run(docker.prune(self.config, role, self.config.retain_containers))
        await host.run(docker.prune_images(self.config), check=False)

    # -- the deploy lock (spec 13.1) ----------------------------------------------------------

    lock_wait: LockWait | None = None  # `--lock-wait`: poll for a held lock instead of failing at once

    def lock(self, message: str) -> DeployLock:
        """The lock a command takes for itself, marked automatic (as Kamal marks it), so `--lock-wait`
        knows it will be released, unlike one taken by `lock acquire`."""
        return DeployLock(self, f"{AUTOMATIC_LOCK_MESSAGE} ({message})")

    @property
    def lock_dir(self) -> str:
        return f".kamal/lock-{self.config.service_with_destination}"

    @property
    def primary(self) -> Host:
        return self.hosts.get(self.config.all_hosts()[0]) or next(iter(self.hosts.values()))

    async def acquire_lock(self, message: str) -> None:
        details = (
            f"Locked by: {getpass.getuser()} at {datetime.datetime.now(datetime.UTC).isoformat()}\n"
            f"Version: {self.config.version}\nMessage: {message}\n"
        )
        encoded = base64.b64encode(details.encode()).decode()
        directory = quote(self.lock_dir)
        taken = await self.primary.run(
            f"mkdir -p .kamal && mkdir {directory} && echo {encoded} > {directory}/details", check=False
        )
        if taken.status != 0:
            holder = await self.lock_status()
            raise LockHeldError(
                f"The deploy lock on {self.primary.name} is held:\n{holder}\n"
                "Another deploy is running, or one died holding it: `pydeploy lock release` frees it.",
                holder,
            )

    async def acquire_lock_waiting(self, message: str, wait: LockWait) -> None:
        """`acquire_lock`, retrying every `wait.interval` seconds while a command holds the lock, up to
        `wait.timeout`; a lock taken by hand (`lock acquire`) is not waited for: nothing would end it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait.timeout
        self.out.info(f"Acquiring the deploy lock (waiting up to {wait.timeout:g}s)...")
        while True:
            try:
                await self.acquire_lock(message)
                return
            except LockHeldError as held:
                if AUTOMATIC_LOCK_MESSAGE not in held.holder:
                    raise DeployError(
                        f"The deploy lock on {self.primary.name} was taken by hand, not waiting for it:\n"
                        f"{held.holder}\n`pydeploy lock release` frees it."
                    ) from None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeployError(
                        f"Timed out after {wait.timeout:g}s waiting for the deploy lock on "
                        f"{self.primary.name}, held by:\n{held.holder}"
                    ) from None
                self.out.info(f"Lock held; retrying in {wait.interval:g}s ({remaining:.0f}s remaining)")
                await asyncio.sleep(min(wait.interval, remaining))

    async def lock_status(self) -> str:
        directory = quote(self.lock_dir)
        status = await self.primary.run(f"cat {directory}/details 2>/dev/null | base64 -d", check=False)
        return status.stdout.strip() or "There is no deploy lock."

    async def release_lock(self) -> None:
        await self.primary.run(f"rm -rf {quote(self.lock_dir)}")

    # -- running on several hosts -----------------------------------------------------------------

    async def _each_host(self, step: str, action: Callable[[Host], Awaitable[None]]) -> None:
        await self._gather((host, step, action(host)) for host in self.hosts.values())

    async def _each_role(self, step: str, action: Callable[[Host, Role], Awaitable[None]]) -> None:
        work = [
            (self.hosts[name], f"{step} ({role.name})", action(self.hosts[name], role))
            for role in self.roles
            for name in role.hosts
            if name in self.hosts
        ]
        await self._gather(work)

    async def _gather(self, work: Iterable[tuple[Host, str, Awaitable[None]]]) -> None:
        async def timed(host: Host, step: str, action: Awaitable[None]) -> None:
            with self.out.step(host.name, step):
                await action

        results = await asyncio.gather(*(timed(*item) for item in work), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, RemoteError):
                    raise DeployError(str(result)) from None
                raise result

    async def close(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts.values()), return_exceptions=True)


AUTOMATIC_LOCK_MESSAGE = "Automatic deploy lock"  # Kamal's words: its deploys' locks say this too


class LockHeldError(DeployError):
    """The deploy lock is held; `holder` is its details (who, when, which version, why)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockWait:
    """`--lock-wait`: how long to wait for a held deploy lock, and how often to look (seconds)."""

    timeout: float = 900
    interval: float = 15


class DeployLock:
    """`async with`: the deploy lock held for the block, released even when the block fails."""

    def __init__(self, deployment: Deployment, message: str) -> None:
        self.deployment = deployment
        self.message = message

    async def __aenter__(self) -> None:
        wait = self.deployment.lock_wait
        if wait is None:
            await self.deployment.acquire_lock(self.message)
        else:
            await self.deployment.acquire_lock_waiting(self.message, wait)

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.deployment.release_lock()
        except RemoteError as problem:
            # Said, but not in place of why the deploy failed (if it did).
            self.deployment.out.error(f"pydeploy: could not release the deploy lock: {problem}")
