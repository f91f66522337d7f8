"""The part of ERB that real `config/deploy.yml` files use, without Ruby.

Kamal renders its config with ERB, and in practice that is almost always to read an environment variable.
pydeploy renders those forms (and shell-style `${VAR}`) and refuses every other tag by file and line, so
Ruby is never left silently in the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TOKEN = re.compile(
    r"<%(?P<tag>.*?)(?P<trim>-?)%>(?P<newline>\n?)"
    r"|(?P<unclosed_tag><%)"
    r"|(?P<escaped>\$\$\{)"
    r"|\$\{(?P<variable>[^}]*)\}"
    r"|(?P<unclosed_variable>\$\{)",
    re.DOTALL,
)
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_QUOTED = r"""("[^"\\]*"|'[^'\\]*')"""
_ENV_INDEX = re.compile(rf"ENV\[\s*{_QUOTED}\s*\]")
_ENV_FETCH = re.compile(rf"ENV\.fetch\(\s*{_QUOTED}\s*(?:,\s*{_QUOTED}\s*)?\)")
_SUPPORTED = (
    '<%= ENV["NAME"] %>, <%= ENV.fetch("NAME") %>, <%= ENV.fetch("NAME", "default") %>, '
    "${NAME} and ${NAME:-default}"
)


class TemplateError(ValueError):
    """A tag that cannot be rendered; the message starts with `file:line`."""


def render(text: str, source: str, environ: Mapping[str, str]) -> str:
    """`text` with every supported tag replaced from `environ`; `source` names the file in errors.

    `$${` gives a literal `${`; `-%>` drops the newline after the tag, as ERB's trim mode `-` does.
    """

    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        where = f"{source}:{line}"
        if match["escaped"]:
            return "${"
        if match["unclosed_tag"] or match["unclosed_variable"]:
            raise TemplateError(f"{where}: {match[0]!r} is never closed")
        if match["variable"] is not None:
            return _variable(match["variable"], environ, where)
        value = _erb(match["tag"], environ, where)
        return value if match["trim"] else value + match["newline"]

    return _TOKEN.sub(replace, text)


def _variable(body: str, environ: Mapping[str, str], where: str) -> str:
    """`${NAME}` or `${NAME:-default}`; as in the shell, the default also replaces an empty value."""
    match = _VARIABLE.fullmatch(body)
    if not match:
        raise TemplateError(f"{where}: cannot read ${{{body}}}: use ${{NAME}} or ${{NAME:-default}}")
    value = environ.get(match["name"])
    if value:
        return value
    if match["default"] is not None:
        return match["default"]
    if value is None:
        raise TemplateError(f"{where}: environment variable {match['name']} is not set (${{{body}}})")
    return value


def _erb(tag: str, environ: Mapping[str, str], where: str) -> str:
    """`ENV["NAME"]`, `ENV.fetch("NAME")` or `ENV.fetch("NAME", "default")`; anything else is refused."""
    body = tag[1:].strip() if tag.startswith("=") else ""
    match = _ENV_INDEX.fullmatch(body) or _ENV_FETCH.fullmatch(body)
    if match is None:
        shown = " ".join(f"<%{tag}%>".split())
        raise TemplateError(
            f"{where}: unsupported ERB {shown}: other Ruby is not supported; pydeploy renders {_SUPPORTED}"
        )
    name = match[1][1:-1]
    if name in environ:
        return environ[name]
    if match.re is _ENV_FETCH and match[2] is not None:
        return match[2][1:-1]
    raise TemplateError(f"{where}: environment variable {name} is not set ({body})")
