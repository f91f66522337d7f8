"""Files the proxy reads from the host (spec 11): the app's error pages, one directory per version, and
custom TLS certificates from secrets, both under `.kamal/proxy/apps-config/`, which the proxy container
mounts at `/home/kamal-proxy/.apps-config`.

The proxy runs as its own user (kamal-proxy, uid 1000 in the image), not as the SSH user who uploads, so
every directory is made 0755 and every error page 0644 whatever the login umask is. A private key is
made 0640 and given the group the proxy runs with (asked from the container); where the SSH user may not
give it that group, it is 0644, as Kamal uploads it. ACME EAB credentials (ours) go to
`.kamal/apps/<app>/acme/`, 0600: the host's shell reads them into the deploy command (see
`docker.proxy_deploy_command`), the proxy never reads them from disk.
Each host gets its files in one SSH call: a tar archive on stdin (secrets travel only there).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from deployer import docker
from deployer.config import DeployConfig, ProxySettings, Role
from deployer.remote import Host

ERROR_PAGE_NAMES = ("4??.html", "5??.html")  # Kamal's glob: pages for a status, nothing else


def local_error_pages(config: DeployConfig, root: Path) -> dict[str, bytes]:
    """The `4xx.html`/`5xx.html` pages in `error_pages_path` (relative to `root`), by file name."""
    if not config.error_pages_path:
        return {}
    directory = root / config.error_pages_path
    found = sorted(
        {path for pattern in ERROR_PAGE_NAMES for path in directory.glob(pattern) if path.is_file()}
    )
    return {path.name: path.read_bytes() for path in found}


@dataclass(frozen=True)
class HostFile:
    """A file to put on the host (path relative to the SSH user's home) and the mode it ends with."""

    path: str
    content: bytes
    mode: str  # for chmod; "key" is a private key the proxy reads (see the module's docstring)


def _archive(files: Iterable[HostFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for file in files:
            info = tarfile.TarInfo(file.path)
            info.size, info.mode = (
                len(file.content),
                0o600,
            )  # given its mode by `unpack_command` once in place
            archive.addfile(info, io.BytesIO(file.content))
    return buffer.getvalue()


_MOUNTS = "{{range .Mounts}}{{.Destination}} {{end}}"
_MOUNT_CHECK = (
    f"docker inspect {docker.PROXY_CONTAINER} --format {quote(_MOUNTS)}"
    f" | grep -q {quote(docker.APPS_CONFIG_MOUNT)}"
    f" || {{ echo 'the proxy container {docker.PROXY_CONTAINER} does not mount {docker.APPS_CONFIG_DIR}"
    " (it was started by an older pydeploy): `pydeploy proxy reboot` recreates it' >&2; exit 3; }"
)
_PROXY_GROUP = f"$(docker exec {docker.PROXY_CONTAINER} id -g)"


def unpack_command(files: Iterable[HostFile], replace: Iterable[str] = ()) -> str:
    """Unpack the archive of `files` from stdin (after removing the directories `replace`), then give
    each file its mode and open the directories under apps-config to the proxy's user."""
    files = list(files)
    steps = ["umask 077"]
    if any(file.path.startswith(f"{docker.APPS_CONFIG_DIR}/") for file in files):
        steps.insert(0, _MOUNT_CHECK)
    steps += [f"rm -rf {quote(directory)}" for directory in replace]
    steps.append("tar -x --no-same-owner -f -")
    directories: dict[str, None] = {}
    for file in files:
        parent = file.path.rpartition("/")[0]
        while parent.startswith(docker.APPS_CONFIG_DIR):
            directories[parent] = None
            parent = parent.rpartition("/")[0]
    if directories:
        steps.append(f"chmod 755 {' '.join(map(quote, sorted(directories)))}")
    for file in files:
        path = quote(file.path)
        if file.mode == "key":
            steps.append(
                f"{{ chgrp {_PROXY_GROUP} {path} 2>/dev/null && chmod 640 {path} || chmod 644 {path}; }}"
            )
        else:
            steps.append(f"chmod {file.mode} {path}")
    return " && ".join(steps)


def _page_files(config: DeployConfig, version: str, pages: Mapping[str, bytes]) -> list[HostFile]:
    directory = f"{docker.APPS_CONFIG_DIR}/{docker.error_pages_dir(config)}/{version}"
    return [HostFile(f"{directory}/{name}", content, "644") for name, content in pages.items()]


def service_files(
    config: DeployConfig,
    service: str,
    proxy: ProxySettings,
    secret_values: Mapping[str, str],
    role_name: str | None = None,
) -> list[HostFile]:
    """What a proxied service needs on the host from secrets: its custom certificate (in the directory
    `docker.certificate_dir(config, role_name)`) and its ACME EAB credentials."""
    files = []
    if proxy.certificate is not None:
        directory = f"{docker.APPS_CONFIG_DIR}/{docker.certificate_dir(config, role_name)}"
        certificate = proxy.certificate
        files.append(
            HostFile(f"{directory}/cert.pem", secret_values[certificate.certificate_pem].encode(), "644")
        )
        files.append(
            HostFile(f"{directory}/key.pem", secret_values[certificate.private_key_pem].encode(), "key")
        )
    for name, credential in (("eab-kid", proxy.acme_eab_kid), ("eab-hmac-key", proxy.acme_eab_hmac_key)):
        if credential is not None:
            path = docker.acme_credential_file(config, service, name)
            files.append(HostFile(path, credential.resolve(secret_values).encode(), "600"))
    return files


async def upload_files(host: Host, files: Iterable[HostFile], replace: Iterable[str] = ()) -> None:
    """Put `files` on `host` in one SSH call (none when there are no files)."""
    files = list(files)
    if files:
        await host.run(unpack_command(files, replace), _archive(files))


async def upload(
    host: Host,
    config: DeployConfig,
    roles: Iterable[Role],
    version: str,
    pages: Mapping[str, bytes],
    secret_values: Mapping[str, str],
) -> None:
    """Before a boot of `version`: its error pages (replacing an earlier upload of it) and what the
    proxied `roles` on `host` need from secrets, in one SSH call."""
    roles = [role for role in roles if role.proxy is not None]
    pages = pages if roles else {}
    files = _page_files(config, version, pages)
    for role in roles:
        service = config.container_prefix(role)
        files += service_files(config, service, role.proxy, secret_values, role.name)
    replace = [f"{docker.APPS_CONFIG_DIR}/{docker.error_pages_dir(config)}/{version}"] if pages else []
    await upload_files(host, files, replace)


def clean_up_command(config: DeployConfig, keep: Iterable[str]) -> str:
    kept = " ".join(f"! -name {quote(version)}" for version in keep)
    directory = quote(f"{docker.APPS_CONFIG_DIR}/{docker.error_pages_dir(config)}")
    return f'find {directory} -mindepth 1 -maxdepth 1 {kept} -exec rm -rf "{{}}" +'


async def remove_old_pages(host: Host, config: DeployConfig, keep: Iterable[str]) -> None:
    """After the old containers stopped: error pages of every version but `keep` (the new one and those
    it replaced, kept for a switch back) go."""
    if config.error_pages_path:
        await host.run(clean_up_command(config, keep), check=False)
