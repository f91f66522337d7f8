"""Housekeeping on the hosts: `prune` old containers and images, `app remove` and `remove` (everything
pydeploy put there), `details`. Each change takes the deploy lock, as in Kamal, and is audited.

`remove` leaves the proxy, its state volume and the network on a host where another app is still
installed (`.kamal/apps` not empty), as Kamal's `proxy remove` does without `--force`.
"""

from __future__ import annotations

from shlex import quote

from deployer import app_commands, audit, docker
from deployer.accessory import Accessories
from deployer.config import DeployConfig
from deployer.deploy import Deployment
from deployer.remote import Host

APPS_DIRECTORY = ".kamal/apps"
PROXY_DIRECTORY = ".kamal/proxy"


def app_directories(config: DeployConfig) -> list[str]:
    """What pydeploy keeps on a host for the app, besides its audit log (kept: it tells who removed it)."""
    app = config.service_with_destination
    return [f"{APPS_DIRECTORY}/{app}", f"{docker.APPS_CONFIG_DIR}/{app}", docker.history_path(config)]


def other_apps() -> str:
    """How many apps are still installed on the host."""
    return f"ls {APPS_DIRECTORY} 2>/dev/null | wc -l"


def remove_proxy(proxy_image: str) -> str:
    """The proxy container, its state, its image and the network (the network stays while a container
    of someone else's is still on it)."""
    return (
        f"{docker.remove_proxy()} && docker volume rm --force {docker.PROXY_VOLUME} >/dev/null"
        f" && (docker image rm {quote(proxy_image)} >/dev/null 2>&1 || true)"
        f" && (docker network rm {docker.NETWORK} >/dev/null 2>&1 || true) && rm -rf {PROXY_DIRECTORY}"
    )


def registry_logout(server: str | None) -> str:
    return f"docker logout{f' {quote(server)}' if server else ''} >/dev/null 2>&1 || true"


class Housekeeping:
    """The commands, on the deployment's hosts and roles."""

    def __init__(self, deployment: Deployment, accessories: Accessories) -> None:
        self.deployment = deployment
        self.config = deployment.config
        self.accessories = accessories

    async def _audit(self, message: str) -> None:
        await audit.audit(self.config, self.deployment.hosts.values(), message)

    async def prune(self, containers: bool, images: bool, retain: int) -> None:
        """Stopped containers beyond the newest `retain` of each role (kept for rollbacks), then the
        images no container uses."""

        async def prune(host: Host) -> None:
            if containers:
                for role in self.deployment.roles_on(host):
                    await host.run(docker.prune(self.config, role, retain))
            if images:
                await host.run(docker.prune_images(self.config))

        what = " and ".join(
            name for name, wanted in (("containers", containers), ("images", images)) if wanted
        )
        async with self.deployment.lock(f"Pruning {what}"):
            await self._audit(f"Pruned {what}")
            await self.deployment.each_host("prune", prune)

    async def remove_app(self) -> None:
        """`app remove`: the app's containers (and its proxy routes), images and files, on every selected
        host."""
        async with self.deployment.lock("Removing the app"):
            await self._remove_app()

    async def _remove_app(self) -> None:
        config = self.config

        async def remove(host: Host) -> None:
            for role in self.deployment.roles_on(host):
                if role.proxy is not None:
                    await host.run(app_commands.proxy_remove(config, role), check=False)
                    await host.run(docker.remove_containers(config, app_commands.canary_role(role)))
                await host.run(docker.remove_containers(config, role))
            await host.run(docker.prune_images(config))
            await host.run(f"rm -rf {' '.join(map(quote, app_directories(config)))}")

        await self._audit("Removed the app's containers, images and files")
        await self.deployment.each_host("remove app", remove)

    async def remove_all(self) -> None:
        """`remove`: the app, its accessories, then the proxy and the network where no other app is left,
        and the registry login."""
        async with self.deployment.lock("Removing everything"):
            await self._remove_app()
            await self.accessories.remove(self.config.accessories)
            out = self.deployment.out
            image = docker.proxy_image(self.config)

            async def remove_proxy_if_alone(host: Host) -> None:
                others = int((await host.run(other_apps())).stdout.strip() or 0)
                if others:
                    out.info(f"{host.name}: kept the proxy, {others} other app(s) are installed there")
                else:
                    await host.run(remove_proxy(image))
                await host.run(registry_logout(self.config.registry.server))

            await self.deployment.each_host("remove proxy", remove_proxy_if_alone)
