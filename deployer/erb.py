"""ERB in `config/deploy.yml` (and other rendered files): Ruby's own `erb` when it is installed, else the
part of ERB that real Kamal files use.

With Ruby, rendering is exactly Kamal's (trim mode `-`). Without it (or with `PYDEPLOY_ERB=subset`),
pydeploy renders the common forms itself: `ENV[...]`, `ENV.fetch`, string literals, `||` defaults, shell
commands in backticks or `%x()`, `.strip`/`.chomp`, and comments; any other tag is refused by file and line,
so Ruby is never left silently in the YAML. Either way `${VAR}` / `${VAR:-default}` (ours) is replaced
outside the tags first, and `$${` gives a literal `${`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

ERB_TIMEOUT = 30
COMMAND_TIMEOUT = 30

_TOKEN = re.compile(
    r"<%(?P<tag>(?!%).*?)(?P<trim>-?)%>(?P<newline>\n?)"
    r"|(?P<literal_tag><%%)"
    r"|(?P<unclosed_tag><%)"
    r"|(?P<escaped>\$\$\{)"
    r"|\$\{(?P<variable>[^}]*)\}"
    r"|(?P<unclosed_variable>\$\{)",
    re.DOTALL,
)
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_STRING = r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
_TERM = re.compile(
    rf"""\s*(?:
        ENV\[\s*(?P<index>{_STRING})\s*\]
      | ENV\.fetch\(\s*(?P<fetch>{_STRING})\s*(?:,\s*(?P<default>{_STRING})\s*)?\)
        (?:\s*\{{\s*(?P<block>{_STRING})\s*\}})?
      | (?P<literal>{_STRING})
      | `(?P<backticks>[^`]*)`
      | %x\((?P<parens>[^()]*)\) | %x\{{(?P<braces>[^{{}}]*)\}} | %x\[(?P<brackets>[^\[\]]*)\]
    )(?P<methods>(?:\s*\.(?:strip|chomp)\b(?:\(\))?)*)\s*""",
    re.VERBOSE | re.DOTALL,
)
_OR = re.compile(r"\|\|")
_METHOD = re.compile(r"strip|chomp")
_ESCAPES = {"n": "\n", "t": "\t", "s": " ", "0": "\0", "e": "\x1b"}
SUPPORTED = (
    "<%= ENV['NAME'] %>, <%= ENV.fetch('NAME') %>, <%= ENV.fetch('NAME', 'default') %>, "
    "<%= ENV['NAME'] || 'default' %>, <%= `command` %> / <%= %x(command) %> (with .strip or .chomp), "
    "<%# comments %>, ${NAME} and ${NAME:-default}; install Ruby for the rest of ERB"
)


class TemplateError(ValueError):
    """A tag that cannot be rendered; the message starts with `file:line`."""


def render(text: str, source: str, environ: Mapping[str, str], cwd: Path | None = None) -> str:
    """`text` rendered with `environ` as `ENV`; `source` names the file in errors, shell commands run in
    `cwd` (the project root).

    Ruby's `erb` renders it when it is on the PATH of `environ` and `PYDEPLOY_ERB` is not `subset` (a
    text without tags is left to the subset, which renders it the same, without starting Ruby).
    """
    ruby_erb = shutil.which("erb", path=environ.get("PATH", os.defpath))
    if ruby_erb is None or environ.get("PYDEPLOY_ERB") == "subset" or "<%" not in text:
        return _substitute(
            text, source, environ, lambda match, where: _subset_tag(match, where, environ, cwd)
        )
    return _ruby(ruby_erb, _substitute(text, source, environ, None), source, environ, cwd)


def _substitute(
    text: str,
    source: str,
    environ: Mapping[str, str],
    tag: Callable[[re.Match[str], str], str] | None,
) -> str:
    """`${...}` replaced and every ERB tag through `tag`; with `tag=None` the tags are kept for Ruby, so
    a `<%` in a substituted value is escaped as ERB's literal `<%%`."""

    def replace(match: re.Match[str]) -> str:
        where = f"{source}:{text.count(chr(10), 0, match.start()) + 1}"
        if match["escaped"]:
            return "${"
        if match["unclosed_tag"] or match["unclosed_variable"]:
            raise TemplateError(f"{where}: {match[0]!r} is never closed")
        if match["variable"] is not None:
            value = _variable(match["variable"], environ, where)
            return value if tag else value.replace("<%", "<%%")
        if tag is None:
            return match[0]
        return "<%" if match["literal_tag"] else tag(match, where)

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


# Ruby's erb


def _ruby(erb: str, text: str, source: str, environ: Mapping[str, str], cwd: Path | None) -> str:
    """The text through `erb -T -`, with `environ` as the whole environment; Ruby's error names the line."""
    env = dict(environ)
    if not {"LC_ALL", "LC_CTYPE", "LANG"} & env.keys():
        env["LANG"] = "C.UTF-8"  # the file was read as UTF-8; Ruby takes ENV's encoding from the locale
    try:
        done = subprocess.run(
            [erb, "-T", "-"],
            input=text,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=ERB_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TemplateError(f"{source}: erb did not finish rendering within {ERB_TIMEOUT} s") from None
    if done.returncode != 0:
        raise TemplateError(_ruby_error(done.stderr, source))
    return done.stdout


def _ruby_error(stderr: str, source: str) -> str:
    """Ruby's first error line (`-:2:in 'fetch': key not found: "X" (KeyError)`) as `<source>:2: ...`."""
    first = next((line for line in stderr.splitlines() if line.strip()), "erb failed without a message")
    match = re.search(r"(?:^|\s)-:(?P<line>\d+):(?:in `[^']*':)?\s*(?P<message>.*)", first)
    if match is None:
        return f"{source}: ERB failed: {first}"
    return f"{source}:{match['line']}: ERB failed: {match['message']}"


# The subset


def _subset_tag(match: re.Match[str], where: str, environ: Mapping[str, str], cwd: Path | None) -> str:
    tag = match["tag"]
    if tag.startswith("#"):
        value = ""
    elif tag.startswith("="):
        value = _expression(tag[1:], where, environ, cwd, f"<%{tag}%>")
    else:
        raise _unsupported(f"<%{tag}%>", where)
    return value if match["trim"] else value + match["newline"]


def _expression(body: str, where: str, environ: Mapping[str, str], cwd: Path | None, shown: str) -> str:
    """`term || term ...`, evaluated as Ruby does: the first term that is not nil, later ones not run."""
    value: str | None = None
    position = 0
    while True:
        term = _TERM.match(body, position)
        if term is None:
            raise _unsupported(shown, where)
        if value is None:
            value = _term(term, where, environ, cwd)
        position = term.end()
        if position == len(body):
            return "" if value is None else value
        more = _OR.match(body, position)
        if more is None:
            raise _unsupported(shown, where)
        position = more.end()


def _term(term: re.Match[str], where: str, environ: Mapping[str, str], cwd: Path | None) -> str | None:
    value: str | None
    if term["index"] is not None:
        value = environ.get(_string(term["index"], where))
    elif term["fetch"] is not None:
        name = _string(term["fetch"], where)
        fallback = term["default"] or term["block"]
        value = environ.get(name, None if fallback is None else _string(fallback, where))
        if value is None:
            raise TemplateError(f"{where}: environment variable {name} is not set (ENV.fetch)")
    elif term["literal"] is not None:
        value = _string(term["literal"], where)
    else:
        command = term["backticks"] or term["parens"] or term["braces"] or term["brackets"] or ""
        value = _run(command, where, environ, cwd)
    for method in _METHOD.findall(term["methods"]):
        if value is None:
            raise TemplateError(f"{where}: cannot call .{method} on nil: {term[0].strip()} is not set")
        value = value.strip() if method == "strip" else _chomp(value)
    return value


def _string(literal: str, where: str) -> str:
    """A Ruby string literal's value: single quotes escape only `\\'` and `\\\\`; double quotes the usual
    escapes, without `#{}` interpolation."""
    quote, body = literal[0], literal[1:-1]
    if quote == "'":
        return re.sub(r"\\([\\'])", r"\1", body)
    if "#{" in body:
        raise TemplateError(f"{where}: string interpolation #{{...}} needs Ruby: {literal}")
    return re.sub(r"\\(.)", lambda escape: _ESCAPES.get(escape[1], escape[1]), body, flags=re.DOTALL)


def _run(command: str, where: str, environ: Mapping[str, str], cwd: Path | None) -> str:
    """A shell command's output, as Ruby's backticks give it (with its trailing newline)."""
    if "#{" in command:
        raise TemplateError(f"{where}: interpolation #{{...}} in a command needs Ruby: {command}")
    try:
        done = subprocess.run(
            ["sh", "-c", command],
            capture_output=True,
            text=True,
            env=dict(environ),
            cwd=cwd,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TemplateError(f"{where}: `{command}` did not finish within {COMMAND_TIMEOUT} s") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        said = f": {detail[-1]}" if detail else ""
        raise TemplateError(f"{where}: command `{command}` failed with status {done.returncode}{said}")
    return done.stdout


def _chomp(value: str) -> str:
    for ending in ("\r\n", "\n", "\r"):
        if value.endswith(ending):
            return value[: -len(ending)]
    return value


def _unsupported(shown: str, where: str) -> TemplateError:
    return TemplateError(
        f"{where}: unsupported ERB {' '.join(shown.split())}: other Ruby is not supported; "
        f"pydeploy renders {SUPPORTED}"
    )
