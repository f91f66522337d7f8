"""Asset bridging (`asset_path`, spec 10): a page the old version rendered keeps finding its fingerprinted
assets after the switch, and the new version's assets are there before it.

Before any new container starts, each host copies the new image's `asset_path` out into
`.kamal/apps/<app>/assets/extracted/<role>-<version>/`, and merges old and new into per-version volume
directories: the new version's volume gets the new assets, then the old ones where no new file has the
same name; the old version's volume (mounted live in the running old container) gets the new ones. The
new container mounts its volume on `asset_path`, shadowing the image's own directory. Once the old
container is stopped, the directories of the versions before the old one go. The new volume holds two
generations, so the assets of the version before the old one are no longer served after the next deploy.
"""

from __future__ import annotations

from shlex import quote

from deployer import docker
from deployer.config import DeployConfig, Role
from deployer.errors import DeployError
from deployer.remote import Host, RemoteError


def extracted_dir(config: DeployConfig, role: Role, version: str) -> str:
    return f"{docker.assets_dir(config, 'extracted')}/{role.name}-{version}"


def extract(config: DeployConfig, role: Role, version: str) -> str:
    """Copy the image's asset directory out through a created (never started) helper container."""
    path = docker.asset_path(config, role)
    helper = quote(f"{config.container_prefix(role)}-assets")
    target = quote(extracted_dir(config, role, version))
    return (
        f"mkdir -p {target}"
        f" && {{ docker container rm {helper} >/dev/null 2>&1 || true; }}"
        f" && docker container create --name {helper} {quote(docker.image(config, version))} >/dev/null"
        f" && docker container cp -L {helper}:{quote(f'{path}/.')} {target}"
        f" && docker container rm {helper} >/dev/null"
    )


def sync(config: DeployConfig, role: Role, version: str, old: str, old_role: Role | None = None) -> str:
    """Merge the volumes, `old` being a shell word naming the running version (empty: none) of `old_role`
    (default: the same role). `cp -n`: a file of the new version always wins over the old version's file
    of the same name."""
    old_name = quote((old_role or role).name)
    new_extracted = quote(extracted_dir(config, role, version))
    new_volume = quote(docker.asset_volume_dir(config, role, version))
    old_extracted = f'{quote(docker.assets_dir(config, "extracted"))}/{old_name}-"{old}"'
    old_volume = f'{quote(docker.assets_dir(config, "volumes"))}/{old_name}-"{old}"'
    return (
        f"mkdir -p {new_volume} && cp -rnT {new_extracted} {new_volume}"
        f' && if [ -n "{old}" ]; then'
        f" {{ cp -rnT {new_extracted} {old_volume} || true; }};"
        f" {{ cp -rnT {old_extracted} {new_volume} || true; }}; fi"
    )


def clean_up(config: DeployConfig, role: Role, keep: tuple[str, ...]) -> str:
    """Remove the role's asset directories of every version but those in `keep`."""
    kept = " ".join(f"! -name {quote(f'{role.name}-{version}')}" for version in keep)
    return "; ".join(
        f"find {quote(docker.assets_dir(config, kind))} -mindepth 1 -maxdepth 1"
        f' -name {quote(f"{role.name}-*")} {kept} -exec rm -rf "{{}}" +'
        for kind in ("extracted", "volumes")
    )


async def prepare(
    host: Host, config: DeployConfig, role: Role, version: str, live: Role | None = None
) -> None:
    """Extract and merge the role's assets on `host` in one SSH call (nothing without `asset_path`). With
    `live` (a rollout's canary), merged with that role's running version as well, both ways: a browser
    moved between live and canary finds the assets of the page it has."""
    if docker.asset_path(config, role) is None:
        return
    running = docker.current_version(config, role)
    command = f"{extract(config, role, version)} && old=$({running}) && {sync(config, role, version, '$old')}"
    if live is not None:
        bridged = sync(config, role, version, "$live", live)
        command += f" && live=$({docker.current_version(config, live)}) && {bridged}"
    try:
        await host.run(command)
    except RemoteError as exc:
        raise DeployError(
            f"{host.name}: could not copy the assets out of {docker.image(config, version)} "
            f"(asset_path {docker.asset_path(config, role)}): {exc.output.strip()[-500:]}"
        ) from None


async def remove_old(host: Host, config: DeployConfig, role: Role, version: str, old: str | None) -> None:
    """After the old container stopped: the directories of versions before it go. The old version's stay
    (Kamal removes those as well), so that its stopped container can start again should a later step
    switch back to it; what the new container serves is the same either way."""
    if docker.asset_path(config, role) is not None:
        await host.run(clean_up(config, role, (version, *([old] if old else []))), check=False)
