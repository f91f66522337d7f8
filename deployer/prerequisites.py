"""What a host needs before pydeploy runs a container there, for the app and the accessories alike: the
registry login and a running proxy."""

from __future__ import annotations

from collections.abc import Mapping

from deployer import docker
from deployer.config import DeployConfig, RegistrySettings
from deployer.errors import DeployError
from deployer.remote import Host


async def log_in(host: Host, registry: RegistrySettings, secret_values: Mapping[str, str]) -> None:
    """`docker login` on the host (the password on stdin); nothing without credentials."""
    if registry.username is None or registry.password is None:
        return
    command = docker.login(registry.server, registry.username.resolve(secret_values))
    done = await host.run(command, registry.password.resolve(secret_values).encode(), check=False)
    if done.status != 0:
        raise DeployError(
            f"{host.name}: the registry {registry.server or 'Docker Hub'} refused the login: "
            f"{done.output.strip()[-500:]}\nCheck registry.username and the password secret."
        )


async def boot_proxy(host: Host, config: DeployConfig) -> None:
    """The proxy container started (created from `proxy.run` where missing) unless it runs, and waited
    for: a deploy right after must find it answering."""
    if (await host.run(docker.proxy_running(), check=False)).status != 0:
        await host.run(docker.run_proxy(config))
        await host.run(docker.wait_for_proxy())
