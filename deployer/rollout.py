"""Canary releases (beyond Kamal; user-demands §3): a new version beside the live one on every host, sent
the requests `proxy.rollout` picks by their `kamal-rollout` cookie (a percentage of its values, and an
allow-list), through pyproxy's `rollout deploy|set|stop`.

- `rollout deploy` boots the version's containers for every proxied role that has `proxy.rollout`,
  checks their health, installs them in the proxy's rollout slot and sets the split; the live containers
  keep every other request. All or nothing: if any host fails, the rollout is ended on every host.
- `rollout set` changes the split (`--percent`, `--list`, else deploy.yml's), `rollout stop` ends it.
- A deploy ends any rollout once it succeeded: deploying the canary's version is promoting it.

The canary's containers are those of a shadow role `<role>-rollout`: a name and a `role` label of their
own, so nothing that acts on the live version (its current version, logs, exec, prune, rollback, the next
deploy's old container) ever picks one of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from shlex import quote

from deployer import app_commands, assets, docker
from deployer.config import Role, RolloutSplit
from deployer.cutover import Cutover, Slot
from deployer.deploy import Deployment
from deployer.errors import DeployError
from deployer.remote import Host, RemoteError


def split_flags(split: RolloutSplit) -> list[str]:
    return [f"--percent={split.percentage}", *(f"--list={quote(value)}" for value in split.allowlist)]


class Rollout:
    """The rollout commands on a deployment's hosts and roles."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.config = deployment.config
        self.roles = [role for role in deployment.roles if role.proxy is not None and role.proxy.rollout]
        if not self.roles:
            raise DeployError(
                "No selected role has proxy.rollout: set `rollout: {percentage: 10}` (and/or `allowlist:`) "
                "in the proxy section of the role to roll out"
            )

    def _hosts(self) -> list[Host]:
        return [host for host in self.deployment.hosts.values() if self._roles_on(host)]

    def _roles_on(self, host: Host) -> list[Role]:
        return [role for role in self.roles if host.name in role.hosts]

    async def deploy(self, root: Path, skip_push: bool) -> None:
        """Build (unless `skip_push`), pull and boot the config's version as the canary everywhere."""
        deployment, version = self.deployment, self.config.version
        await deployment.deliver(root, skip_push, version)
        async with deployment.lock(f"Rolling out {version}"):
            await deployment.boot_proxy()
            cutover = Cutover(self.config, deployment.secrets, deployment.out, version)
            live = {}
            for host in self._hosts():
                for role in self._roles_on(host):
                    live[id(cutover.add(host, app_commands.canary_role(role)))] = role

            async def route(slot: Slot) -> None:
                await self._route(slot, live[id(slot)])

            try:
                await deployment.on_slots("prepare canary assets", self._prepare, cutover.slots)
                await deployment.on_slots("start canary", cutover.start, cutover.slots)
                await deployment.on_slots("route canary", route, cutover.slots)
            except BaseException as exc:
                ended = await self._take_back()
                if isinstance(exc, DeployError | RemoteError):
                    raise DeployError(
                        f"{exc}\nThe rollout of {version} is ended on every host:\n{ended}"
                    ) from None
                raise

    async def _take_back(self) -> str:
        """After a failure anywhere: the rollout ended on every host; never raises, says how each went."""

        async def end_on(host: Host) -> str:
            for role in self._roles_on(host):
                done = await host.run(app_commands.end_rollout(self.config, role), check=False)
                if done.status != 0:
                    return f"  {host.name}: could NOT end the rollout: {done.output.strip()[-300:]}"
            return f"  {host.name}: serves only the live version"

        lines = await asyncio.gather(*(end_on(host) for host in self._hosts()), return_exceptions=True)
        return "\n".join(
            line if isinstance(line, str) else f"  {host.name}: could NOT end the rollout: {line}"
            for host, line in zip(self._hosts(), lines, strict=True)
        )

    async def _prepare(self, slot: Slot) -> None:
        await assets.prepare(slot.host, self.config, slot.role, self.config.version)

    async def _route(self, slot: Slot, role: Role) -> None:
        """The canary in the proxy's rollout slot (the proxy checks its health again), given the split;
        the previous canary, if any, stopped."""
        assert role.proxy is not None and role.proxy.rollout is not None
        target = f"--target={quote(f'{slot.container}:{role.proxy.app_port}')}"
        timeouts = [
            f"--deploy-timeout={docker.go_duration(self.config.deploy_timeout)}",
            f"--drain-timeout={docker.go_duration(self.config.drain_timeout)}",
        ]
        await slot.host.run(app_commands.rollout(self.config, role, "deploy", [target, *timeouts]))
        await slot.host.run(app_commands.rollout(self.config, role, "set", split_flags(role.proxy.rollout)))
        if slot.old_name:
            await slot.host.run(f"{docker.find_named(slot.old_name)} | xargs --no-run-if-empty docker rm -f")

    async def set(self, split: RolloutSplit | None) -> None:
        """The split of a running rollout: `split`, else each role's `proxy.rollout`."""

        async def apply(host: Host) -> None:
            for role in self._roles_on(host):
                assert role.proxy is not None and role.proxy.rollout is not None
                flags = split_flags(split or role.proxy.rollout)
                await host.run(app_commands.rollout(self.config, role, "set", flags))

        async with self.deployment.lock("Setting the rollout split"):
            await self.deployment.each_host("rollout set", apply)

    async def stop(self) -> None:
        async with self.deployment.lock("Ending the rollout"):
            await self.deployment.each_host("end rollout", self._end_on)

    async def _end_on(self, host: Host) -> None:
        for role in self._roles_on(host):
            await host.run(app_commands.end_rollout(self.config, role))
