"""Loading `config/deploy.yml`: ERB, the destination file merged over it, the version, then `schema`.

Errors name the file and the path of the value; the settings themselves live in `deployer.settings` and
are re-exported here, where the rest of pydeploy imports them from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from deployer import erb
from deployer.schema import NAME, Invalid, Where, build, deep_merge, format_path
from deployer.settings import (
    CANARY_SUFFIX,
    REDACTED,
    Accessory,
    AccessoryFile,
    BootSettings,
    Buffering,
    BuilderSettings,
    ConfigError,
    Credential,
    DeployConfig,
    EnvSettings,
    Healthcheck,
    JumpHost,
    LoggingSettings,
    ProxyRun,
    ProxySettings,
    RegistrySettings,
    Role,
    RolloutSplit,
    SshSettings,
    SslCertificate,
)

__all__ = [
    "CANARY_SUFFIX",
    "CONFIG_FILE",
    "REDACTED",
    "Accessory",
    "AccessoryFile",
    "BootSettings",
    "Buffering",
    "BuilderSettings",
    "ConfigError",
    "Credential",
    "DeployConfig",
    "EnvSettings",
    "Healthcheck",
    "JumpHost",
    "LoggingSettings",
    "ProxyRun",
    "ProxySettings",
    "RegistrySettings",
    "Role",
    "RolloutSplit",
    "SshSettings",
    "SslCertificate",
    "load_config",
]

CONFIG_FILE = "config/deploy.yml"
_DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def load_config(
    root: Path,
    destination: str | None = None,
    version: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str = CONFIG_FILE,
) -> DeployConfig:
    """Read `config_file` (`config/deploy.yml`) under `root`, deep-merge `<stem>.<destination>.yml` beside it
    over it (mappings merge, lists and scalars are replaced) and validate the result.

    The version is `version`, else `$VERSION`, else git's HEAD (with an `_uncommitted_<hex>` suffix for a
    dirty tree when `builder.context` builds from the working directory). `environ` (default: the process
    environment, plus `KAMAL_DESTINATION`) feeds the `${VAR}` / `<%= ENV[...] %>` tags.
    """
    env = dict(os.environ if environ is None else environ)
    overlay_file = None
    if destination is not None:
        if not NAME.fullmatch(destination):
            raise ConfigError(f'Destination "{destination}" may contain only letters, digits, "-" and "_"')
        env["KAMAL_DESTINATION"] = destination
        stem, dot, suffix = config_file.rpartition(".")
        overlay_file = f"{stem}.{destination}.{suffix}" if dot else f"{config_file}.{destination}"
    data = _load_yaml(root, config_file, env)
    if data is None:
        raise ConfigError(f"{config_file}: the file is empty; it needs at least service, image and servers")
    overlay = None
    if overlay_file is not None:
        overlay = _load_yaml(root, overlay_file, env)
        data = deep_merge(data, {} if overlay is None else overlay)

    def where(path: Where) -> str:
        """`<file>: <path>`, naming the destination file when the value came from it."""
        blamed = path and overlay_file and _holds(overlay, path)
        source = overlay_file if blamed else config_file
        return f"{source}: {format_path(path)}" if path else source

    try:
        config, warnings = build(
            data, destination, lambda builder: _version(root, version, env, builder), root
        )
    except Invalid as problem:
        raise ConfigError(f"{where(problem.path)}: {problem}") from None
    return dataclasses.replace(
        config, warnings=tuple(f"{where(path)}: {message}" for path, message in warnings)
    )


def _load_yaml(root: Path, name: str, environ: Mapping[str, str]) -> object:
    path = root / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Configuration file not found in {path}") from None
    except OSError as error:
        raise ConfigError(f"Cannot read configuration file {path}: {error.strerror}") from None
    try:
        rendered = erb.render(text, name, environ, root)
    except erb.TemplateError as error:
        raise ConfigError(str(error)) from None
    try:
        return yaml.safe_load(rendered)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{name}: invalid YAML{at}: {getattr(error, 'problem', None) or error}") from None


def _holds(data: object, path: Where) -> bool:
    """Whether `path` exists in `data`: a merged value at that path came from this file."""
    for part in path:
        if isinstance(data, list):
            data = dict(enumerate(data))
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _version(root: Path, flag: str | None, environ: Mapping[str, str], builder: BuilderSettings) -> str:
    version = flag or environ.get("VERSION") or _git_version(root, dirty_suffix=builder.context is not None)
    if not _DOCKER_TAG.fullmatch(version):
        raise ConfigError(
            f'Version "{version}" cannot be an image tag: use at most 128 letters, digits, "_", "." and "-"'
        )
    return version


def _git_version(root: Path, *, dirty_suffix: bool) -> str:
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        raise ConfigError(
            f"Can't use commit hash as version, no git repository found in {root}; "
            "pass --version or set VERSION"
        )
    if dirty_suffix and _git(root, "status", "--porcelain"):
        return f"{head}_uncommitted_{os.urandom(8).hex()}"
    return head


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None
