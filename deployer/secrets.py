"""Secrets: Kamal's `.kamal/secrets*` dotenv files, the check that the config's secrets exist, redaction.

Secrets stay out of deploy.yml: the files hold `KEY=value` lines, usually fed from a password manager by
`$(command)`, and are read locally at deploy time. Their values must never reach output, hence `redact`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from deployer.config import REDACTED, ConfigError, DeployConfig, ProxySettings, RegistrySettings

SECRETS_PATH = ".kamal/secrets"
_ASSIGNMENT = re.compile(r"[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*")
_VARIABLE = re.compile(r"(?P<escape>\\?)\$(?:\{(?P<braced>[A-Za-z0-9_]+)\}|(?P<name>[A-Za-z0-9_]+))")
_AFTER_QUOTE = re.compile(r"[ \t]*(?:#.*)?")
_COMMENT = re.compile(r"(?:^|[ \t])#")
_ESCAPES = {"n": "\n", "r": "\r"}


def secret_files(destination: str | None) -> tuple[str, ...]:
    """The files read, relative to the project root, later ones overriding earlier ones. As in Kamal, a
    destination reads `secrets.<destination>` instead of the plain `secrets`, not as well."""
    return (f"{SECRETS_PATH}-common", f"{SECRETS_PATH}.{destination}" if destination else SECRETS_PATH)


def load_secrets(
    root: Path, destination: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every secret defined by the files of `secret_files` that exist under `root` (missing ones are skipped).

    `$VAR` and `${VAR}` read keys defined earlier in the same file, then `environ` (default: the process
    environment, plus `KAMAL_DESTINATION`); `$(command)` runs through the shell in `root`, and a command
    that fails is an error. Single quotes keep a value literal; `\\$` escapes a `$`.
    """
    env = dict(os.environ if environ is None else environ)
    if destination:
        env["KAMAL_DESTINATION"] = destination
    secrets: dict[str, str] = {}
    for name in secret_files(destination):
        path = root / name
        if path.is_file():
            secrets.update(_parse(path.read_text(encoding="utf-8"), name, env, root))
    return secrets


def check_referenced(config: DeployConfig, secrets: Mapping[str, str]) -> None:
    """Fail before any host is touched if the config names a secret that no secrets file defines."""
    missing = [(key, used_by) for key, used_by in _references(config) if key not in secrets]
    if missing:
        files = " or ".join(secret_files(config.destination))
        raise ConfigError(
            "\n".join(
                f"Secret {key} (used by {used_by}) is not defined in {files}" for key, used_by in missing
            )
        )


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """`text` with every secret value replaced by `[REDACTED]`, longest values first so none leaks in part."""
    # Also as the env file writes them (escaped), which is how a container may print them back.
    written = {escaped(value) for value in secrets.values() if value}
    values = sorted({value for value in secrets.values() if value} | written, key=len, reverse=True)
    if not values:
        return text
    return re.sub("|".join(map(re.escape, values)), REDACTED, text)


def escaped(value: str) -> str:
    """A value as the env file holds it: escaped as inside a double-quoted literal (spec 7.3)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def redact_data(data: object, secrets: Mapping[str, str]) -> object:
    """`redact` applied to every string in nested dicts and lists, e.g. `DeployConfig.as_dict()` before
    `pydeploy config` prints it."""
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, Mapping):
        return {key: redact_data(value, secrets) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(value, secrets) for value in data]
    return data


def _references(config: DeployConfig) -> list[tuple[str, str]]:
    """(secret, where the config uses it) for every secret the config needs."""
    references = _registry_references(config.registry, "registry")
    references += [(key, "env.secret") for key in config.env.secret_sources().values()]
    references += _proxy_references(config.proxy, "proxy")
    for role in config.roles:
        used_by = f"servers.{role.name}.env.secret"
        references += [(key, used_by) for key in role.env.secret_sources().values()]
        if role.proxy is not None and role.proxy is not config.proxy:
            references += _proxy_references(role.proxy, f"servers.{role.name}.proxy")
    for accessory in config.accessories:
        where = f"accessories.{accessory.name}"
        references += [(key, f"{where}.env.secret") for key in accessory.env.secret_sources().values()]
        if accessory.registry is not None:
            references += _registry_references(accessory.registry, f"{where}.registry")
        if accessory.proxy is not None:
            references += _proxy_references(accessory.proxy, f"{where}.proxy")
    first_use: dict[str, str] = {}
    for key, used_by in references:
        first_use.setdefault(key, used_by)
    return list(first_use.items())


def _registry_references(registry: RegistrySettings, where: str) -> list[tuple[str, str]]:
    credentials = (("username", registry.username), ("password", registry.password))
    return [
        (credential.value, f"{where}.{name}")
        for name, credential in credentials
        if credential is not None and credential.secret
    ]


def _proxy_references(proxy: ProxySettings, where: str) -> list[tuple[str, str]]:
    """The custom certificate's secrets and ACME's external account binding, when they name secrets."""
    references = []
    if proxy.certificate is not None:
        references += [
            (proxy.certificate.certificate_pem, f"{where}.ssl.certificate_pem"),
            (proxy.certificate.private_key_pem, f"{where}.ssl.private_key_pem"),
        ]
    for name, credential in (
        ("acme_eab_kid", proxy.acme_eab_kid),
        ("acme_eab_hmac_key", proxy.acme_eab_hmac_key),
    ):
        if credential is not None and credential.secret:
            references.append((credential.value, f"{where}.{name}"))
    return references


def _parse(text: str, source: str, environ: Mapping[str, str], root: Path) -> dict[str, str]:
    """One dotenv file; `source` names it in errors, as `source:line`."""
    values: dict[str, str] = {}
    position, line = 0, 1
    while position < len(text):
        end = _line_end(text, position)
        content = text[position:end]
        where = f"{source}:{line}"
        if content.strip() and not content.lstrip().startswith("#"):
            match = _ASSIGNMENT.match(content)
            if not match:
                # The line itself is not shown: it may be part of a secret (a key's second line).
                raise ConfigError(f"{where}: expected KEY=value (a multi-line value must be quoted)")
            start = position + match.end()
            if start < end and text[start] in "'\"":
                close = _closing_quote(text, start)
                if close < 0:
                    raise ConfigError(f"{where}: the {text[start]} quote of {match['key']} is never closed")
                end = _line_end(text, close)
                if not _AFTER_QUOTE.fullmatch(text, close + 1, end):
                    raise ConfigError(f"{where}: unexpected text after the closing quote of {match['key']}")
                raw, quote = text[start + 1 : close], text[start]
            else:
                raw, quote = _COMMENT.split(text[start:end], maxsplit=1)[0].rstrip(), ""
            if quote == "'":
                values[match["key"]] = raw
            else:
                values[match["key"]] = _expand(raw, quote == '"', values, environ, root, where)
        line += text.count("\n", position, end) + 1
        position = end + 1
    return values


def _line_end(text: str, position: int) -> int:
    end = text.find("\n", position)
    return len(text) if end < 0 else end


def _closing_quote(text: str, start: int) -> int:
    """Index of the quote closing the one at `start`, or -1; `\\"` does not close a double-quoted value."""
    quote, index = text[start], start + 1
    while index < len(text):
        if text[index] == "\\" and quote == '"':
            index += 2
        elif text[index] == quote:
            return index
        else:
            index += 1
    return -1


def _expand(
    raw: str,
    double_quoted: bool,
    values: Mapping[str, str],
    environ: Mapping[str, str],
    root: Path,
    where: str,
) -> str:
    """Escapes, `$VAR`, `${VAR}` and `$(command)` in one pass, so a substituted value is never re-read."""

    def variable(match: re.Match[str]) -> str:
        if match["escape"]:
            return match[0][1:]
        name = match["braced"] or match["name"]
        return values.get(name, environ.get(name, ""))

    parts, index = [], 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw):
            escaped = raw[index + 1]
            parts.append(_ESCAPES.get(escaped, escaped) if double_quoted else escaped)
            index += 2
        elif raw.startswith("$(", index):
            close = _closing_paren(raw, index + 1, where)
            parts.append(
                _run(
                    raw[index + 2 : close],
                    _VARIABLE.sub(variable, raw[index + 2 : close]),
                    environ,
                    root,
                    where,
                )
            )
            index = close + 1
        elif match := _VARIABLE.match(raw, index):
            parts.append(variable(match))
            index = match.end()
        else:
            parts.append(char)
            index += 1
    return "".join(parts)


def _closing_paren(raw: str, start: int, where: str) -> int:
    depth = 0
    for index in range(start, len(raw)):
        depth += {"(": 1, ")": -1}.get(raw[index], 0)
        if depth == 0:
            return index
    raise ConfigError(f"{where}: $( is never closed")


def _run(written: str, command: str, environ: Mapping[str, str], root: Path, where: str) -> str:
    """The command's output minus one trailing newline, as Ruby's backticks and `chomp` give Kamal.
    Errors show the command as written, since the substituted one may hold secrets."""
    done = subprocess.run(command, shell=True, cwd=root, env=dict(environ), stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ConfigError(f"{where}: $({written}) failed with exit status {done.returncode}")
    return done.stdout.removesuffix("\n")
