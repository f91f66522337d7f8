"""`app stop` and `app start` (spec 13.5). A stopped app leaves the proxy (its route removed, so nothing
is sent to a container that is gone; a rollout's canaries go too); a started one comes back as the version
each host last switched to (what `deploy` recorded there), or `--version`, and is deployed to the proxy
again."""

from __future__ import annotations

from deployer import app_commands, audit, docker
from deployer.deploy import Deployment
from deployer.errors import DeployError
from deployer.remote import Host


async def stop(deployment: Deployment) -> None:
    config = deployment.config

    async def stop_on(host: Host) -> None:
        for role in deployment.roles_on(host):
            running = (await host.run(docker.current_version(config, role))).stdout.strip()
            await host.run(audit.record_command(config, "Stopped app", role.name))
            if role.proxy is not None:
                # As Kamal: a route already gone is no reason not to stop. The rollout goes with the route.
                await host.run(app_commands.proxy_remove(config, role), check=False)
                await host.run(docker.remove_containers(config, app_commands.canary_role(role)))
            if running:
                await host.run(docker.stop(config, role, running))

    async with deployment.lock("Stopping the app"):
        await deployment.each_host("stop app", stop_on)


async def start(deployment: Deployment, version: str | None) -> None:
    """`version` None: the version the host last switched to."""
    config = deployment.config

    async def start_on(host: Host) -> None:
        chosen = version or (await _last_switched_to(deployment, host))
        for role in deployment.roles_on(host):
            await host.run(audit.record_command(config, f"Started app version {chosen}", role.name))
            container = (await host.run(docker.container_id(config, role, chosen))).stdout.strip()
            if not container:
                raise DeployError(
                    f"{host.name}: there is no {role.name} container of version {chosen} to start "
                    "(`pydeploy app containers` lists them)"
                )
            await host.run(docker.start(config, role, chosen))
            if role.proxy is not None:
                await host.run(docker.proxy_deploy(config, role, container))

    async with deployment.lock("Starting the app"):
        await deployment.each_host("start app", start_on)


async def _last_switched_to(deployment: Deployment, host: Host) -> str:
    history = (await host.run(docker.read_history(deployment.config))).stdout.split()
    if not history:
        raise DeployError(f"{host.name}: no version was ever deployed there; give one with --version")
    return history[-1]
