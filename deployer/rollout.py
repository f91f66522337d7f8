"""Canary releases (beyond Kamal; user-demands §3): a new version beside the live one on every host, sent
the requests `proxy.rollout` picks by their `kamal-rollout` cookie (a percentage of its values, and an
allow-list), through pyproxy's `rollout deploy|set|stop`.

- `rollout deploy` boots the version's containers for every proxied role that has `proxy.rollout`,
  checks their health, installs them in the proxy's rollout slot and sets the split; the live containers
  keep every other request. All or nothing: if any host fails, the rollout is ended on every host.
  The canary's assets are bridged with the live version's both ways, as a deploy bridges old and new.
- `rollout set` changes the split of a running rollout, `rollout stop` ends it.
- A deploy ends any rollout once it succeeded (on the hosts and roles it deployed): deploying the
  canary's version is promoting it.

The canary's containers are those of a shadow role `<role>-rollout` (app_commands.canary_role): a name and
a `role` label of their own, so nothing that acts on the live version (its current version, logs, exec,
prune, rollback, the next deploy's old container) ever picks one of them.
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
    """The rollout commands on a deployment's hosts and roles: those with `proxy.rollout`, or for `stop`
    every proxied one (a rollout outlives its key being removed from deploy.yml)."""

    def __init__(self, deployment: Deployment, configured_only: bool = True) -> None:
        self.deployment = deployment
        self.config = deployment.config
        self.roles = [
            role
            for role in deployment.roles
            if role.proxy is not None and (role.proxy.rollout or not configured_only)
        ]
        if not self.roles:
            raise DeployError(
                "No selected role has proxy.rollout: set `rollout: {percentage: 10}` (and/or `allowlist:`) "
                "in the proxy section of the role to roll out"
            )

    def _roles_on(self, host: Host) -> list[Role]:
        return [role for role in self.deployment.roles_on(host) if role in self.roles]

    def _hosts(self) -> list[Host]:
        return [host for host in self.deployment.hosts.values() if self._roles_on(host)]

    # -- deploy -------------------------------------------------------------------------------

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

            async def prepare(slot: Slot) -> None:
                await assets.prepare(slot.host, self.config, slot.role, version, live=live[id(slot)])

            async def route(slot: Slot) -> None:
                await self._route(slot, live[id(slot)])

            try:
                await deployment.on_slots("prepare canary assets", prepare, cutover.slots)
                await deployment.on_slots("start canary", cutover.start, cutover.slots)
                await deployment.on_slots("route canary", route, cutover.slots)
            except BaseException as exc:
                ended = await self._end_everywhere()
                if isinstance(exc, DeployError | RemoteError):
                    raise DeployError(
                        f"{exc}\nThe rollout of {version} is ended on every host:\n{ended}"
                    ) from None
                raise

    async def _route(self, slot: Slot, role: Role) -> None:
        """The canary in the proxy's rollout slot (the proxy checks its health again), given the split;
        the previous canary, if any, then stopped and removed (the proxy drained it)."""
        assert role.proxy is not None and role.proxy.rollout is not None
        target = f"--target={quote(f'{slot.container}:{role.proxy.app_port}')}"
        deploy = app_commands.rollout(
            self.config, role, "deploy", [target, *docker.timeout_flags(self.config)]
        )
        try:
            await slot.host.run(deploy)
        except RemoteError as exc:
            raise DeployError(
                f"{slot.host.name}: the proxy refused the rollout of {role.name}: "
                f"{exc.output.strip()[-500:]}\nA rollout goes beside a live version: `pydeploy deploy` first."
            ) from None
        await slot.host.run(app_commands.rollout(self.config, role, "set", split_flags(role.proxy.rollout)))
        if slot.old_name:
            stop = docker.stop_named(slot.old_name, docker.stop_seconds(self.config, slot.role))
            await slot.host.run(f"{stop} >/dev/null && docker rm {quote(slot.old_name)} >/dev/null")

    # -- set and stop -------------------------------------------------------------------------

    async def set(self, percentage: int | None, allowlist: tuple[str, ...] | None) -> None:
        """The split of a running rollout: each value given, else the role's `proxy.rollout` one."""

        async def apply(host: Host) -> None:
            for role in self._roles_on(host):
                assert role.proxy is not None and role.proxy.rollout is not None
                canary = app_commands.canary_role(role)
                running = (await host.run(docker.current_version(self.config, canary))).stdout.strip()
                if not running:
                    raise DeployError(
                        f"{host.name}: no rollout of {role.name} runs (`pydeploy rollout deploy`)"
                    )
                configured = role.proxy.rollout
                split = RolloutSplit(
                    configured.percentage if percentage is None else percentage,
                    configured.allowlist if allowlist is None else allowlist,
                )
                await host.run(app_commands.rollout(self.config, role, "set", split_flags(split)))

        async with self.deployment.lock("Setting the rollout split"):
            await self.deployment.each_host("rollout set", apply)

    async def stop(self) -> None:
        async with self.deployment.lock("Ending the rollout"):
            report, ended = await self._end_everywhere()
            if not ended:
                raise DeployError(f"The rollout did not end everywhere:\n{report}")

    async def _end_everywhere(self) -> tuple[str, bool]:
        """The rollout ended on every host (app_commands.end_rollout); never raises: a line per host, and
        whether it ended on all of them."""

        async def end_on(host: Host) -> bool:
            for role in self._roles_on(host):
                done = await host.run(app_commands.end_rollout(self.config, role), check=False)
                if done.status != 0:
                    raise DeployError(done.output.strip()[-300:])
            return True

        hosts = self._hosts()
        outcomes = await asyncio.gather(*(end_on(host) for host in hosts), return_exceptions=True)
        lines = [
            f"  {host.name}: "
            + ("serves only the live version" if outcome is True else f"could NOT end the rollout: {outcome}")
            for host, outcome in zip(hosts, outcomes, strict=True)
        ]
        return "\n".join(lines), all(outcome is True for outcome in outcomes)
