"""One role on one host during a boot (spec 8.2): its new container started and found ready, the switch
of traffic to it, the watch after, and the way back when any host fails.

Kamal replaces the old container on each host as soon as that host switched; here the old containers
keep running until the whole boot succeeded, so that going back is one `kamal-proxy deploy` to a
container that is still warm. A role without the proxy has nothing to switch: its new container runs
beside the old one from the moment it is ready, and going back stops the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from deployer import app_commands, docker
from deployer.config import DeployConfig, Role
from deployer.errors import DeployError
from deployer.output import Output
from deployer.remote import Host, RemoteError

HEALTH_POLL = 0.5  # seconds between the health checks that wait for a new container


@dataclass
class Slot:
    """A role on a host during one boot: the new container and what it replaces."""

    host: Host
    role: Role
    container: str = ""  # the new container's id, once it runs
    old_version: str | None = None  # what ran before; None on a first boot
    old_name: str | None = None  # the container it ran in
    switched: bool = False  # traffic (or, without the proxy, work) went to the new container
    outcome: str = ""  # after the way back: what became of this slot, for the summary

    @property
    def label(self) -> str:
        return f"{self.host.name} ({self.role.name})"


class Cutover:
    """Every slot of one boot of `version`, so that a failure anywhere can take them all back."""

    def __init__(self, config: DeployConfig, secret_values: Mapping[str, str], out: Output, version: str):
        self.config = config
        self.secrets = secret_values
        self.out = out
        self.version = version
        self.slots: list[Slot] = []

    @property
    def hosts(self) -> list[Host]:
        return list(dict.fromkeys(slot.host for slot in self.slots))

    def add(self, host: Host, role: Role) -> Slot:
        slot = Slot(host, role)
        self.slots.append(slot)
        return slot

    # -- forward ------------------------------------------------------------------------------

    async def start(self, slot: Slot) -> None:
        """Run the new container beside the old one and wait until it is ready for traffic or work."""
        config, host, role, version = self.config, slot.host, slot.role, self.version
        running = (await host.run(docker.current_version(config, role))).stdout.strip() or None
        # The running container of this very version (a redeploy, a rollback to it) is moved aside first.
        replaced = docker.replaced_name(config, role, version)
        slot.old_version = running
        if running is not None and running != version:
            slot.old_name = config.container_name(role, running)
        await host.write_file(docker.env_file_path(config, role), docker.env_file(config, role, self.secrets))
        await host.run(docker.rename_existing(config, role, version, replaced))
        if running == version:  # only once it is moved aside: the way back then knows where it is
            slot.old_name = replaced
        await host.run(docker.run_app(config, role, version, host.name))
        slot.container = (await host.run(docker.container_id(config, role, version))).stdout.strip()
        if not slot.container:
            raise DeployError(f"Failed to get the new {role.name} container on {host.name}: did it boot?")
        if role.proxy is not None:
            await self._wait_healthy(slot)
        else:
            await self._wait_ready(slot)

    async def switch(self, slot: Slot) -> None:
        """`kamal-proxy deploy` to the new container: the proxy checks it again, switches and drains the old
        one. The old container keeps running (see the module's docstring)."""
        if slot.role.proxy is not None:
            try:
                await slot.host.run(docker.proxy_deploy(self.config, slot.role, slot.container))
            except RemoteError as exc:
                raise DeployError(self._explain_switch(slot, exc.output)) from None
        slot.switched = True

    async def watch(self, slot: Slot, seconds: float) -> None:
        """Check the switched container every health-check interval for `seconds`; DeployError at its first
        failure."""
        role, started = slot.role, asyncio.get_running_loop().time()
        if role.proxy is not None:
            interval = role.proxy.healthcheck.interval
            command = docker.health_probe(role, slot.container, seconds, interval, watch=True)
        else:
            command = docker.watch_status(slot.container, seconds)
        result = await slot.host.run(command, check=False)
        if result.status != 0:
            after = asyncio.get_running_loop().time() - started
            raise DeployError(
                f"{slot.host.name}: {self.version} ({role.name}) failed its health check {after:.1f}s into "
                f"the watch: {_last_line(result.output)}"
            )

    async def retire(self, host: Host) -> None:
        """After a boot that succeeded everywhere: the host's old containers stopped (with each role's
        stop timeout), the version tagged `latest` and recorded as the one the host switched to, and any
        rollout ended (rollout.py)."""
        for slot in (slot for slot in self.slots if slot.host is host):
            if slot.old_name:
                await host.run(docker.stop_named(slot.old_name, docker.stop_seconds(self.config, slot.role)))
        await host.run(docker.tag_latest(self.config, self.version))
        await host.run(docker.record_version(self.config, self.version))
        for slot in (slot for slot in self.slots if slot.host is host and slot.role.proxy is not None):
            # A deploy ends any rollout (of its own version, it promoted it); the deploy stands if this fails.
            ended = await host.run(app_commands.end_rollout(self.config, slot.role), check=False)
            if ended.status != 0:
                self.out.error(
                    f"{host.name}: could not end the rollout of {slot.role.name} (`pydeploy rollout stop` "
                    f"again): {_last_line(ended.output)}"
                )

    # -- back ---------------------------------------------------------------------------------

    async def switch_back(self, slot: Slot) -> None:
        """Undo the slot: traffic back to the old container (started again should it have stopped), the new
        container stopped. Never raises: what happened is left in `slot.outcome`."""
        config, host, role = self.config, slot.host, slot.role
        try:
            if slot.switched and slot.old_name is None:
                slot.outcome = f"keeps {self.version} (no previous version to go back to)"
                return
            if slot.switched:
                await host.run(docker.start_named(slot.old_name))
                if role.proxy is not None:
                    old = (await host.run(docker.find_named(slot.old_name))).stdout.strip()
                    await host.run(docker.proxy_deploy(config, role, old))
                slot.outcome = f"switched back to {slot.old_version}"
            else:
                slot.outcome = f"never switched: still on {slot.old_version or 'nothing'}"
            if slot.container:
                await host.run(
                    docker.stop_container(slot.container, docker.stop_seconds(config, role)), check=False
                )
            elif slot.old_version != self.version or slot.old_name:
                # Started, or being started, but its id unknown; by name (never the old one's: moved aside).
                await host.run(docker.stop(config, role, self.version), check=False)
            if slot.old_version == self.version and slot.old_name:
                # A redeploy of the running version: the container that serves again gets its name back.
                await host.run(docker.restore_name(config, role, self.version, slot.old_name))
        except (RemoteError, DeployError) as exc:
            slot.outcome = f"could NOT switch back to {slot.old_version}: {exc}"

    def summary(self, hosts: list[Host]) -> str:
        """One line per slot after the way back (`h1: switched back to v1`), and one for each of `hosts`
        a failure in an earlier boot group kept this boot from reaching."""
        single_role = len({slot.role.name for slot in self.slots}) == 1
        lines = [f"  {slot.host.name if single_role else slot.label}: {slot.outcome}" for slot in self.slots]
        lines += [
            f"  {host.name}: untouched (its boot group never started)"
            for host in hosts
            if host not in self.hosts
        ]
        return (
            f"Every host goes back to what it ran before {self.version} (all or nothing); "
            f"{self.version} is not recorded on any host:\n" + "\n".join(lines)
        )

    # -- readiness ----------------------------------------------------------------------------

    async def _wait_healthy(self, slot: Slot) -> None:
        """The new proxied container answers its health check (GET from the proxy container), within
        deploy_timeout."""
        host, role, timeout = slot.host, slot.role, self.config.deploy_timeout
        probe = docker.health_probe(role, slot.container, timeout, HEALTH_POLL)
        result = await host.run(probe, check=False)
        if result.status != 0:
            logs = (await host.run(docker.logs(self.config, role, self.version, 20), check=False)).stdout
            detail = f"last health check: {_last_line(result.output)}\n{logs}"
            raise DeployError(self._explain_unhealthy(slot, detail))

    async def _wait_ready(self, slot: Slot) -> None:
        """A container without the proxy is ready when Docker says `healthy`, or `running` still after
        readiness_delay (spec 8.4); other states are asked again after 1 s, 2 s, 3 s... up to
        deploy_timeout."""
        host, config = slot.host, self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.deploy_timeout
        attempt = 1
        while True:
            status = await self._status(slot)
            if status == "running" and config.readiness_delay > 0:
                await asyncio.sleep(config.readiness_delay)
                status = await self._status(slot)
            if status in ("running", "healthy"):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                logs = (await host.run(docker.logs(config, slot.role, self.version, 20), check=False)).stdout
                raise DeployError(
                    f"{host.name}: the new {slot.role.name} container is not ready after "
                    f"{config.deploy_timeout:g}s ({status}): it must keep running (or be healthy by its "
                    f"Docker health check).\n{logs.strip()}\n{host.name} still runs its previous version."
                )
            await asyncio.sleep(min(attempt, remaining))
            attempt += 1

    async def _status(self, slot: Slot) -> str:
        result = await slot.host.run(docker.container_status(slot.container), check=False)
        return result.stdout.strip() or _last_line(result.output)

    def _explain_switch(self, slot: Slot, output: str) -> str:
        """Why `kamal-proxy deploy` refused: a health check (explained), or what the proxy said."""
        if "health" in output.lower():
            return self._explain_unhealthy(slot, output)
        return f"{slot.host.name}: the proxy refused to switch {slot.role.name}: {output.strip()[-1000:]}"

    def _explain_unhealthy(self, slot: Slot, detail: str) -> str:
        proxy = slot.role.proxy
        assert proxy is not None
        return (
            f"{slot.host.name}: the new {slot.role.name} container never became healthy within "
            f"{self.config.deploy_timeout:g}s (GET {proxy.healthcheck.path} on port {proxy.app_port} must "
            f"answer 2xx).\n{detail.strip()}\n"
            "Likely causes: proxy.app_port is not the port the app listens on; the app redirects "
            f"{proxy.healthcheck.path} (e.g. to HTTPS) or needs a Host it does not get; the app binds "
            "127.0.0.1 instead of 0.0.0.0; the app boots slower than deploy_timeout."
        )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no answer"
