"""The deploy, in Kamal's order (spec 7.2), on every host in parallel; hooks (spec 12) where Kamal runs them.

1. build and push the image here (skipped with --skip-push; hook `pre-build` first);
2. on every host: log in to the registry and pull it; a host that cannot is found before any traffic moves;
3. take the deploy lock on the primary host; hook `pre-deploy`;
4. boot the proxy container where it is missing (it is never replaced by a deploy);
5. boot the new version, in boot groups of `boot.limit` hosts (all at once by default), `boot.wait`
   seconds between groups, hooks `pre-app-boot`/`post-app-boot` around each group. In a group, every
   new container is started and found ready first (proxied roles: their health check answers 2xx;
   other roles: running after `readiness_delay`); only then does the group switch (`kamal-proxy deploy`:
   the proxy checks the new container again, switches, drains the old one);
6. with `--watch DURATION`: the new version's health checks keep being watched on every host;
7. only then, on every host: the old containers stopped (`stop_timeout`, else Docker's default for a
   proxied role and `drain_timeout` for the others), the version tagged `latest` and recorded; prune;
8. release the lock; hook `post-deploy`.

All or nothing (beyond Kamal): until step 7 the old containers keep running, and any failure before it
(a health check, a switch, a hook, a later boot group, the watch) switches every host that had
switched back to its previous version and stops every new container, so all hosts serve what they
did before and none records the version (see cutover.py). A host that ran nothing before keeps the
new version. The error says why, and which host ended where.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import getpass
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from deployer import assets, docker, prerequisites, proxy_files
from deployer.accessory import Accessories
from deployer.config import DeployConfig, Role
from deployer.cutover import Cutover, Slot
from deployer.errors import DeployError
from deployer.hooks import Hooks
from deployer.output import Output
from deployer.remote import Host, RemoteError


class Deployment:
    def __init__(
        self,
        config: DeployConfig,
        secret_values: dict[str, str],
        out: Output,
        hosts: list[str] | None = None,
        roles: list[str] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config
        self.secrets = secret_values
        self.out = out
        self.hooks = hooks  # None: no hooks run (-H, or a caller that is not a command)
        self.roles = [role for role in config.roles if roles is None or role.name in roles]
        names = hosts or config.all_hosts()
        self.hosts = {name: Host(name, config.ssh, out.command) for name in names}

    # -- the commands -------------------------------------------------------------------------

    async def setup(self, root: Path, skip_push: bool, watch: float = 0) -> None:
        """First deploy to fresh hosts: Docker checked, the network and the proxy created, then a deploy."""
        await self.each_host("docker", self._ensure_docker)
        await self.hook("docker-setup")
        await self.deploy(root, skip_push, watch, boot_accessories=True)

    async def deploy(
        self, root: Path, skip_push: bool, watch: float = 0, boot_accessories: bool = False
    ) -> None:
        """Build (unless `skip_push`), pull, and boot the config's version everywhere; `watch` seconds of
        health checks after the switch (`--watch`). `setup` boots the accessories first (as Kamal's does);
        a deploy never touches them."""
        started = asyncio.get_running_loop().time()
        version = self.config.version
        await self.deliver(root, skip_push, version)
        async with self.lock(f"Deploying {version}"):
            await self.hook("pre-deploy", lock=True)
            await self.boot_proxy()
            if boot_accessories:
                accessories = Accessories(self.config, self.secrets, self.out, self.hosts, root)
                await accessories.boot(self.config.accessories)
            await self.boot(version, watch)
            await self.each_host("prune", self._prune)
        await self.hook("post-deploy", runtime=asyncio.get_running_loop().time() - started)

    async def redeploy(self, root: Path, skip_push: bool, watch: float = 0) -> None:
        """A deploy without proxy boot and prune (the proxy is known to run)."""
        started = asyncio.get_running_loop().time()
        version = self.config.version
        await self.deliver(root, skip_push, version)
        async with self.lock(f"Redeploying {version}"):
            await self.hook("pre-deploy", lock=True)
            await self.boot(version, watch)
        await self.hook("post-deploy", runtime=asyncio.get_running_loop().time() - started)

    async def deliver(self, root: Path, skip_push: bool, version: str) -> None:
        """The image on every host: built and pushed here first unless `skip_push`."""
        if not skip_push:
            await self.hook("pre-build")
            self.build_and_push(root)
        await self.each_host("pull", lambda host: self._pull(host, version))

    async def hook(self, name: str, **details: object) -> None:
        """Run the project's hook `name` (see hooks.Hooks.run for `details`), unless hooks are off."""
        if self.hooks is not None:
            await self.hooks.run(name, **details)

    async def rollback(self, version: str | None) -> str:
        """Back to `version` (default: the newest stopped one older than what runs), from the containers
        kept on the hosts: no build, no pull."""
        started = asyncio.get_running_loop().time()
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
            await self.hook("pre-deploy", version=version, lock=True)
            try:
                await self.boot(version)
            except DeployError as exc:
                raise DeployError(f"Rollback to {version} failed: {exc}") from None
        await self.hook("post-deploy", version=version, runtime=asyncio.get_running_loop().time() - started)
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
            role = next(iter(self.roles_on(host)), self.roles[0])
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

    async def _pull(self, host: Host, version: str) -> None:
        await prerequisites.log_in(host, self.config.registry, self.secrets)
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
                await prerequisites.boot_proxy(host, self.config)

        await self.each_host("proxy boot", boot)

    async def reboot_proxy(self) -> None:
        async def reboot(host: Host) -> None:
            await host.run(docker.remove_proxy())

        await self.hook("pre-proxy-reboot")
        await self.each_host("proxy remove", reboot)
        await self.boot_proxy()
        await self.hook("post-proxy-reboot")

    async def boot(self, version: str, watch: float = 0) -> None:
        """Boot `version` on the selected hosts, group by group, all or nothing (spec 8.2 and the module's
        docstring); `watch` seconds of health checks on every host before the old containers stop."""
        await self._prepare_hosts(version)
        cutover = Cutover(self.config, self.secrets, self.out, version)
        hosts = self._app_hosts()
        groups = self._boot_groups(hosts)
        try:
            for number, group in enumerate(groups):
                if number and self.config.boot.wait:
                    await asyncio.sleep(self.config.boot.wait)
                names = [host.name for host in group]
                await self.hook("pre-app-boot", hosts=names, version=version, lock=True)
                slots = [cutover.add(host, role) for host in group for role in self.roles_on(host)]
                await self.on_slots("start new container", cutover.start, slots)
                await self.on_slots("switch traffic", cutover.switch, slots)
                await self.hook("post-app-boot", hosts=names, version=version, lock=True)
            if watch:
                await self._watch(cutover, watch)
        except BaseException as exc:
            await self.on_slots("switch back", cutover.switch_back, cutover.slots)
            if isinstance(exc, DeployError | RemoteError):
                raise DeployError(f"{exc}\n{cutover.summary(hosts)}") from None
            raise
        await self._gather((host, "stop old containers", cutover.retire(host)) for host in cutover.hosts)
        await self._gather(
            (host, "remove old files", self._clean_up_host(host, cutover)) for host in cutover.hosts
        )

    async def _prepare_hosts(self, version: str) -> None:
        """Before any new container starts anywhere, every host has the files of `version`: error pages and
        certificates for the proxy (proxy_files.py), assets merged with the running version's (assets.py)."""
        pages = proxy_files.local_error_pages(self.config, Path.cwd())  # relative to where pydeploy runs
        if self.config.error_pages_path and not pages:
            raise DeployError(
                f"error_pages_path: {self.config.error_pages_path} has no 4xx.html or 5xx.html pages"
            )

        async def prepare(host: Host) -> None:
            roles = self.roles_on(host)
            await proxy_files.upload(host, self.config, roles, version, pages, self.secrets)
            for role in roles:
                await assets.prepare(host, self.config, role, version)

        await self._gather((host, "prepare files", prepare(host)) for host in self._app_hosts())

    async def _clean_up_host(self, host: Host, cutover: Cutover) -> None:
        """After the old containers stopped: assets and error pages of versions older than those go."""
        slots = [slot for slot in cutover.slots if slot.host is host]
        for slot in slots:
            await assets.remove_old(host, self.config, slot.role, cutover.version, slot.old_version)
        kept = {cutover.version, *(slot.old_version for slot in slots if slot.old_version)}
        await proxy_files.remove_old_pages(host, self.config, kept)

    def _app_hosts(self) -> list[Host]:
        """The selected hosts that run a selected role."""
        return [host for host in self.hosts.values() if self.roles_on(host)]

    def _boot_groups(self, hosts: list[Host]) -> list[list[Host]]:
        size = self.config.boot.group_size(len(hosts)) or len(hosts)
        return [hosts[index : index + size] for index in range(0, len(hosts), size)]

    def roles_on(self, host: Host) -> list[Role]:
        return [role for role in self.roles if host.name in role.hosts]

    async def on_slots(self, step: str, action: Callable[[Slot], Awaitable[None]], slots: list[Slot]) -> None:
        await self._gather((slot.host, f"{step} ({slot.role.name})", action(slot)) for slot in slots)

    async def _watch(self, cutover: Cutover, seconds: float) -> None:
        """`--watch`: every switched container's health checks for `seconds`; DeployError at the first
        failure on any host (the others' watches are dropped: every host is going back)."""
        with self.out.step("local", f"watch health checks {seconds:g}s"):
            watches = [asyncio.ensure_future(cutover.watch(slot, seconds)) for slot in cutover.slots]
            done, pending = await asyncio.wait(watches, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()

    async def _prune(self, host: Host) -> None:
        for role in self.roles_on(host):
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
        undescribed_since = None  # when the lock was first seen without details, in this streak
        while True:
            try:
                await self.acquire_lock(message)
                return
            except LockHeldError as held:
                # Released, or not yet described, between our mkdir and our read: looked at again soon.
                racing = held.holder == NO_LOCK
                if not racing:
                    undescribed_since = None
                elif undescribed_since is None:
                    undescribed_since = loop.time()
                    self.out.info(
                        f"The deploy lock on {self.primary.name} has no details yet (being taken or "
                        f"released); looking again every {LOCK_RACE_RETRY:g}s"
                    )
                elif loop.time() - undescribed_since > STALE_LOCK_AFTER:
                    raise DeployError(
                        f"The deploy lock on {self.primary.name} has had no details for "
                        f"{STALE_LOCK_AFTER:g}s: a command died taking it, or could not write there? "
                        "`pydeploy lock release` frees it."
                    ) from None
                if not racing and AUTOMATIC_LOCK_MESSAGE not in held.holder:
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
                if racing:
                    await asyncio.sleep(min(LOCK_RACE_RETRY, remaining))
                    continue
                self.out.info(f"Lock held; retrying in {wait.interval:g}s ({remaining:.0f}s remaining)")
                await asyncio.sleep(min(wait.interval, remaining))

    async def lock_status(self) -> str:
        directory = quote(self.lock_dir)
        status = await self.primary.run(f"cat {directory}/details 2>/dev/null | base64 -d", check=False)
        return status.stdout.strip() or NO_LOCK

    async def release_lock(self) -> None:
        await self.primary.run(f"rm -rf {quote(self.lock_dir)}")

    # -- running on several hosts -----------------------------------------------------------------

    async def each_host(self, step: str, action: Callable[[Host], Awaitable[None]]) -> None:
        await self._gather((host, step, action(host)) for host in self.hosts.values())

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
NO_LOCK = "There is no deploy lock."
LOCK_RACE_RETRY = 1.0  # seconds: a lock seen held but with no details is looked at again this soon
STALE_LOCK_AFTER = 10.0  # seconds without details: the lock is not being taken, it was left so


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
    """`async with`: the deploy lock held for the block, released even when the block fails.

    Under KAMAL_LOCK=true (what a hook gets while the command that runs it holds the lock) the lock is
    the caller's already: a pydeploy command in a hook neither takes nor releases it, as in Kamal."""

    def __init__(self, deployment: Deployment, message: str) -> None:
        self.deployment = deployment
        self.message = message
        self.held_by_caller = os.environ.get("KAMAL_LOCK") == "true"

    async def __aenter__(self) -> None:
        wait = self.deployment.lock_wait
        if self.held_by_caller:
            await self._check_held_by_caller()
            return
        if wait is None:
            await self.deployment.acquire_lock(self.message)
        else:
            await self.deployment.acquire_lock_waiting(self.message, wait)

    async def _check_held_by_caller(self) -> None:
        """A KAMAL_LOCK=true left in a shell, or inherited from another app's hook, must not mean "no
        lock": the lock this command would take has to be there."""
        deployment = self.deployment
        held = await deployment.primary.run(f"test -d {quote(deployment.lock_dir)}", check=False)
        if held.status != 0:
            raise DeployError(
                f"KAMAL_LOCK=true says the command that runs this one holds the deploy lock, but "
                f"{deployment.primary.name} has no {deployment.lock_dir}: unset KAMAL_LOCK to take it."
            )
        deployment.out.info("Using the deploy lock of the command that runs this one (KAMAL_LOCK=true)")

    async def __aexit__(self, *exc: object) -> None:
        if self.held_by_caller:
            return
        try:
            await self.deployment.release_lock()
        except RemoteError as problem:
            # Said, but not in place of why the deploy failed (if it did).
            self.deployment.out.error(f"pydeploy: could not release the deploy lock: {problem}")
