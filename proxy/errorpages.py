"""A service's own error pages (`deploy --error-pages DIR`), rendered as kamal-proxy's Go templates are.

kamal-proxy parses every `*.html` in DIR as a Go html/template, and `<status>.html` replaces the built-in page
for that status, for that service only. The page data has one field, `Message`: the `stop --message` text,
empty otherwise. Pages are read and parsed at deploy time, so a bad page fails the deploy, and each is
rendered once with an empty message; only the stopped 503 is rendered per request, with its message.

The Go template subset parsed here is what Kamal users write: literal text, `{{ .Message }}` (optionally
`| html`), `{{ if .Message }}` and `{{ with .Message }}` (where `{{ . }}` is the message) with optional
`{{ else }}`, `{{ else if }}` and `{{ else with }}`, nested, up to `{{ end }}`; comments `{{/* ... */}}`; and
the trim markers `{{- ` and ` -}}`, which remove the spaces, tabs, CRs and LFs next to them, as Go's do.
Anything else (range, define, template, block, variables, function calls, a field but `.Message`) is refused
with the file, line and action. Go would parse an unknown field and fail only when serving the page; refusing
it here tells the operator at deploy time. A page must also be UTF-8, since it is served as UTF-8.

Escaping: the message gets html/template's text-context escaping (`&<>"'+` as entities, NUL as U+FFFD), or
text/template's `html` function's (the same without `+`) when piped to `html`, exactly as Go outputs them. Go
escapes by context, JS-quoting a value inside `<script>` or percent-encoding it in a URL attribute; that is
not reproduced, so there the message comes out HTML-escaped instead. This is safe: the message is the
operator's own `stop --message` text (no request data ever reaches a page), and its HTML escaping keeps it
from closing an element or a quoted attribute wherever the page puts it. Go also drops `<!-- -->` comments
from the page text; they are kept here (a browser shows neither, and finding them needs Go's HTML state
machine).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from proxy.http.responses import page_body

# html/template's htmlReplacementTable, and text/template's HTMLEscape (used by `{{ .Message | html }}`).
_TEMPLATE_ESCAPES = str.maketrans(
    {"\0": "\ufffd", '"': "&#34;", "&": "&amp;", "'": "&#39;", "+": "&#43;", "<": "&lt;", ">": "&gt;"}
)
_HTML_FUNC_ESCAPES = {char: entity for char, entity in _TEMPLATE_ESCAPES.items() if char != ord("+")}

_SPACE = " \t\r\n"  # Go's template spaces: the only characters trim markers remove
_LEFT_TRIM = re.compile(r"-[ \t\r\n]")
_RIGHT_TRIM_CLOSE = re.compile(r"[ \t\r\n]-}}")
_WORD = re.compile(r"\||[^ \t\r\n|]+")
_STATUS_PAGE = re.compile(r"[45]\d\d\.html")


@dataclass(frozen=True)
class _Action:
    """One `{{ ... }}` as written (for error messages), with its words."""

    line: int
    text: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class _Message:
    """`{{ .Message }}`, or `{{ . }}` inside `with`: the message, escaped with `escapes`."""

    escapes: dict[int, str]


@dataclass(frozen=True)
class _Branch:
    """`if` or `with`: both test whether the message is non-empty, the only value a page has."""

    then: tuple[_Node, ...]
    otherwise: tuple[_Node, ...]


_Node = str | _Message | _Branch


def _error(why: str) -> ValueError:
    return ValueError(f"unable to load error pages: {why}")


def _lex(name: str, source: str) -> list[str | _Action]:
    """Split `source` into literal text and actions, applying the trim markers and dropping comments."""
    items: list[str | _Action] = []
    pos, trim_next = 0, False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        trim_before = start >= 0 and _LEFT_TRIM.match(source, start + 2) is not None
        if trim_before:
            text = text.rstrip(_SPACE)
        if text:
            items.append(text)
        if start < 0:
            return items
        inside = start + 4 if trim_before else start + 2
        line = source.count("\n", 0, start) + 1
        if source.startswith("/*", inside):
            pos, trim_next = _comment_end(f"{name}:{line}", source, inside)
            continue
        close = source.find("}}", inside)
        if close < 0:
            raise _error(f"{name}:{line}: unclosed action")
        body = source[inside:close]
        trim_next = len(body) >= 2 and body[-2] in _SPACE and body[-1] == "-"
        words = _WORD.findall(body[:-2] if trim_next else body)
        items.append(_Action(line, source[start : close + 2], tuple(words)))
        pos = close + 2


def _comment_end(where: str, source: str, start: int) -> tuple[int, bool]:
    """Where the comment opening at `start` ends, past its `}}`, and whether it trims the text after it."""
    close = source.find("*/", start + 2)
    if close < 0:
        raise _error(f"{where}: unclosed comment")
    after = close + 2
    if _RIGHT_TRIM_CLOSE.match(source, after):
        return after + 4, True
    if source.startswith("}}", after):
        return after + 2, False
    raise _error(f"{where}: comment ends before closing delimiter")


class _Parser:
    """Builds one page's node tree from its lexed items, refusing what the subset lacks."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.items = _lex(name, source)
        self.at = 0

    def page(self) -> tuple[_Node, ...]:
        nodes, closer = self.block(in_with=False)
        if closer is not None:
            raise self.error(closer, f"unexpected {closer.text}")
        return nodes

    def error(self, action: _Action, why: str) -> ValueError:
        return _error(f"{self.name}:{action.line}: {why}")

    def block(self, in_with: bool) -> tuple[tuple[_Node, ...], _Action | None]:
        """The nodes up to the `else` or `end` that closes them (returned too), or to the end of the page."""
        nodes: list[_Node] = []
        while self.at < len(self.items):
            item = self.items[self.at]
            self.at += 1
            if isinstance(item, str):
                nodes.append(item)
            elif item.words[:1] in (("else",), ("end",)):
                return tuple(nodes), item
            elif item.words[:1] in (("if",), ("with",)):
                nodes.append(self.branch(item, item.words, in_with))
            else:
                nodes.append(self.output(item, in_with))
        return tuple(nodes), None

    def branch(self, opener: _Action, words: tuple[str, ...], in_with: bool) -> _Branch:
        """`if`/`with` (`words`, from `opener`: `{{ if ... }}` or `{{ else if ... }}`) up to its `end`."""
        keyword, *condition = words
        if len(condition) != 1:
            raise self.error(opener, f"unsupported action {opener.text}")
        self.operand(opener, condition[0], in_with)
        then, closer = self.block(in_with or keyword == "with")
        otherwise: tuple[_Node, ...] = ()
        if closer is not None and closer.words[0] == "else" and len(closer.words) > 1:
            if closer.words[1] not in ("if", "with"):
                raise self.error(closer, f"unsupported action {closer.text}")
            return _Branch(then, (self.branch(closer, closer.words[1:], in_with),))  # shares this end
        if closer is not None and closer.words[0] == "else":
            otherwise, closer = self.block(in_with)  # dot is the outer one again after `with`'s else
        if closer is None:
            raise self.error(opener, f"{opener.text} has no {{{{ end }}}}")
        if closer.words != ("end",):
            raise self.error(closer, f"unexpected {closer.text}")
        return _Branch(then, otherwise)

    def output(self, action: _Action, in_with: bool) -> _Message:
        words = action.words
        if len(words) == 1 or words[1:] == ("|", "html"):
            self.operand(action, words[0], in_with)
            return _Message(_TEMPLATE_ESCAPES if len(words) == 1 else _HTML_FUNC_ESCAPES)
        raise self.error(action, f"unsupported action {action.text}")

    def operand(self, action: _Action, word: str, in_with: bool) -> None:
        """Check that `word` is the message: `.Message`, or `.` inside `with`, where dot is the message."""
        if word == ("." if in_with else ".Message"):
            return
        if word == ".Message":
            raise self.error(action, f"{action.text}: inside {{{{ with }}}} use {{{{ . }}}} for the message")
        if word.startswith(".") and word != ".":
            raise self.error(action, f"unknown field {word} in {action.text}: pages have only .Message")
        raise self.error(action, f"unsupported action {action.text}")


def _escape(message: str, escapes: dict[int, str]) -> str:
    # A message from argv can hold lone surrogates (undecodable bytes); they become "?" rather than fail.
    return message.encode(errors="replace").decode().translate(escapes)


def _render(nodes: tuple[_Node, ...], message: str) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Message):
            parts.append(_escape(message, node.escapes))
        else:
            parts.append(_render(node.then if message else node.otherwise, message))
    return "".join(parts)


@dataclass(frozen=True)
class ErrorPages:
    """A service's parsed `--error-pages` directory; immutable, so routing tables can share it freely."""

    directory: str
    statuses: frozenset[int]  # which `<status>.html` exist (400-599); other pages are parsed, not served
    _pages: Mapping[int, tuple[_Node, ...]] = field(repr=False)
    _rendered: Mapping[int, bytes] = field(repr=False)

    def render(self, status: int, message: str = "") -> bytes | None:
        """The page for `status` (UTF-8 HTML) with `message`, or None: the built-in page applies then."""
        if not message:
            return self._rendered.get(status)
        nodes = self._pages.get(status)
        return None if nodes is None else _render(nodes, message).encode()

    def __reduce__(self) -> tuple[object, ...]:
        """A mapping proxy does not pickle: the pages travel as dicts, wrapped again on arrival."""
        return (_error_pages, (self.directory, self.statuses, dict(self._pages), dict(self._rendered)))

    def rendered(self) -> dict[int, bytes]:
        """Every page with an empty message (all errors but a stopped service's 503), rendered at load time.

        A new dict each call, so no caller can change another's; fetch it once per deploy, not per request."""
        return dict(self._rendered)


def load_error_pages(directory: str) -> ErrorPages:
    """Read and parse every `*.html` in `directory`; at deploy time, so that a bad page fails the deploy."""
    try:
        names = sorted(name for name in Path(directory).iterdir() if name.name.endswith(".html"))
    except OSError as exc:
        raise _error(f"{directory}: {exc.strerror}") from exc
    if not names:
        raise _error(f"{directory}: no .html files")
    pages = {}
    for path in names:
        nodes = _Parser(path.name, _read(path)).page()
        if _STATUS_PAGE.fullmatch(path.name):
            pages[int(path.name[:3])] = nodes
    rendered = {status: _render(nodes, "").encode() for status, nodes in pages.items()}
    return _error_pages(directory, frozenset(pages), pages, rendered)


def _error_pages(
    directory: str,
    statuses: frozenset[int],
    pages: dict[int, tuple[_Node, ...]],
    rendered: dict[int, bytes],
) -> ErrorPages:
    return ErrorPages(directory, statuses, MappingProxyType(pages), MappingProxyType(rendered))


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _error(f"{path.name}: {exc.strerror}") from exc
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _error(f"{path.name}:{line}: not UTF-8") from exc


def stop_page(pages: ErrorPages | None, message: str) -> bytes:
    """The body of a stopped service's 503: its own 503 page with `message`, else the built-in 503 page,
    which shows the message (escaped as html/template would) instead of its sentence when there is one."""
    page = pages.render(503, message) if pages is not None else None
    if page is not None:
        return page
    return page_body(503, _escape(message, _TEMPLATE_ESCAPES) if message else None)
