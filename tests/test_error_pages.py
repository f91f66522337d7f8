"""A service's own error pages (spec §12.3, §8 `stop --message`): Go's template subset, escaping and loading.

Every expected string is written by hand from Go's html/template semantics.
"""

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from proxy.errorpages import ErrorPages, load_error_pages, stop_page
from proxy.http.responses import error_response

KAMAL_PAGE = "Custom Maintenance Page: {{ .Message }}"  # Kamal's integration test page


def load(directory: Path, files: dict[str, str | bytes]) -> ErrorPages:
    for name, content in files.items():
        if isinstance(content, bytes):
            (directory / name).write_bytes(content)
        else:
            (directory / name).write_text(content, encoding="utf-8")
    return load_error_pages(str(directory))


def render(directory: Path, source: str, message: str) -> str:
    page = load(directory, {"503.html": source}).render(503, message)
    assert page is not None
    return page.decode()


def refusal(directory: Path, files: dict[str, str | bytes]) -> str:
    with pytest.raises(ValueError) as refused:
        load(directory, files)
    return str(refused.value)


# --- the template subset ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "expected"),
    [
        (KAMAL_PAGE, "Testing Maintence Mode", "Custom Maintenance Page: Testing Maintence Mode"),
        ("{{.Message}}!", "hi", "hi!"),
        ("a { } }} {x} b", "hi", "a { } }} {x} b"),
        ("{{ if .Message }}<p>{{ .Message }}</p>{{ else }}<p>Down.</p>{{ end }}", "hi", "<p>hi</p>"),
        ("{{ if .Message }}<p>{{ .Message }}</p>{{ else }}<p>Down.</p>{{ end }}", "", "<p>Down.</p>"),
        ("a{{ if .Message }}[{{ .Message }}]{{ end }}b", "x", "a[x]b"),
        ("a{{ if .Message }}[{{ .Message }}]{{ end }}b", "", "ab"),
        ("{{ if .Message }}1{{ if .Message }}2{{ else }}no{{ end }}3{{ end }}", "x", "123"),
        ("{{ if .Message }}1{{ if .Message }}2{{ end }}3{{ else }}0{{ end }}", "", "0"),
        ("{{ if .Message }}a{{ else if .Message }}b{{ else }}c{{ end }}", "x", "a"),
        ("{{ if .Message }}a{{ else if .Message }}b{{ else }}c{{ end }}", "", "c"),
        ("{{ if .Message }}a{{ else with .Message }}{{ . }}{{ end }}", "", ""),
        ("{{ with .Message }}<b>{{ . }}</b>{{ else }}none{{ end }}", "hi", "<b>hi</b>"),
        ("{{ with .Message }}<b>{{ . }}</b>{{ else }}none{{ end }}", "", "none"),
        ("{{ with .Message }}{{ if . }}({{ . }}){{ end }}{{ end }}", "hi", "(hi)"),
        ("{{ with .Message }}{{ . }}{{ else }}{{ .Message }}-{{ end }}", "", "-"),
    ],
)
def test_each_construct_renders_as_go_does(tmp_path, source, message, expected):
    assert render(tmp_path, source, message) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a{{/* note */}}b", "ab"),
        ("a{{/* one\ntwo {{ .Message }} */}}b", "ab"),
        ("a \n {{- /* x */ -}} \n b", "ab"),
    ],
)
def test_comments_render_nothing(tmp_path, source, expected):
    assert render(tmp_path, source, "hi") == expected


LIST = "<ul>\n  {{- if .Message }}\n  <li>{{ .Message }}</li>\n  {{- end }}\n</ul>"


@pytest.mark.parametrize(
    ("source", "message", "expected"),
    [
        ("<p>\n  {{- .Message -}}\n</p>", "hi", "<p>hi</p>"),
        ("a \n{{- .Message }} b", "hi", "ahi b"),
        ("a {{ .Message -}} \t\r\n b", "hi", "a hib"),
        (LIST, "x", "<ul>\n  <li>x</li>\n</ul>"),
        (LIST, "", "<ul>\n</ul>"),
        ("[ {{- if .Message -}} \n yes \n {{- else -}} \n no \n {{- end -}} ]", "", "[no]"),
        # Go trims only space, tab, CR and LF: not NBSP, form feed, vertical tab or em space.
        ("a\u00a0\x0c {{- .Message -}} \x0b\u2003b", "hi", "a\u00a0\x0chi\x0b\u2003b"),
    ],
)
def test_trim_markers_remove_the_adjacent_spaces_as_go_does(tmp_path, source, message, expected):
    assert render(tmp_path, source, message) == expected


# --- escaping -----------------------------------------------------------------------------------

HOSTILE = '<script>alert("x&y")</script> it\'s +1\0'


def test_the_message_is_escaped_as_html_template_escapes_text(tmp_path):
    expected = "&lt;script&gt;alert(&#34;x&amp;y&#34;)&lt;/script&gt; it&#39;s &#43;1\ufffd"
    assert render(tmp_path, "{{ .Message }}", HOSTILE) == expected


def test_the_message_inside_with_and_in_a_quoted_attribute_is_escaped_the_same(tmp_path):
    source = '<p title="{{ .Message }}">{{ with .Message }}{{ . }}{{ end }}</p>'
    escaped = "&lt;script&gt;alert(&#34;x&amp;y&#34;)&lt;/script&gt; it&#39;s &#43;1\ufffd"
    assert render(tmp_path, source, HOSTILE) == f'<p title="{escaped}">{escaped}</p>'


def test_piping_to_html_escapes_as_go_html_function_which_keeps_plus(tmp_path):
    expected = "&lt;script&gt;alert(&#34;x&amp;y&#34;)&lt;/script&gt; it&#39;s +1\ufffd"
    assert render(tmp_path, "{{ .Message | html }}", HOSTILE) == expected
    assert render(tmp_path, "{{.Message|html}}", HOSTILE) == expected


def test_a_message_with_undecodable_bytes_renders_with_a_question_mark(tmp_path):
    assert render(tmp_path, "{{ .Message }}", "a\udcffb") == "a?b"


# --- what the subset refuses --------------------------------------------------------------------

ONLY_MESSAGE = ": pages have only .Message"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("<html>\n<body>\n{{ range .Items }}x{{ end }}", "3: unsupported action {{ range .Items }}"),
        ('{{ define "x" }}y{{ end }}', '1: unsupported action {{ define "x" }}'),
        ('{{ template "x" }}', '1: unsupported action {{ template "x" }}'),
        ('{{ block "x" . }}y{{ end }}', '1: unsupported action {{ block "x" . }}'),
        ('{{ printf "%s" .Message }}', '1: unsupported action {{ printf "%s" .Message }}'),
        ("{{ .Message | upper }}", "1: unsupported action {{ .Message | upper }}"),
        ("{{ $.Message }}", "1: unsupported action {{ $.Message }}"),
        ("{{ . }}", "1: unsupported action {{ . }}"),
        ("{{ if }}x{{ end }}", "1: unsupported action {{ if }}"),
        ("{{ }}", "1: unsupported action {{ }}"),
        ("{{ /* not a comment: Go wants it right after the braces */ }}", "1: unsupported action {{ /* not"),
        ("{{-.Message}}", "1: unsupported action {{-.Message}}"),
        ("a\n\n{{ .Status }}", f"3: unknown field .Status in {{{{ .Status }}}}{ONLY_MESSAGE}"),
        ("{{ if .Status }}x{{ end }}", f"1: unknown field .Status in {{{{ if .Status }}}}{ONLY_MESSAGE}"),
        (
            "{{ with .Message }}{{ .Message }}{{ end }}",
            "1: {{ .Message }}: inside {{ with }} use {{ . }} for",
        ),
        ("a\n{{ end }}", "2: unexpected {{ end }}"),
        ("{{ else }}", "1: unexpected {{ else }}"),
        ("{{ if .Message }}x{{ else }}y{{ else }}z{{ end }}", "1: unexpected {{ else }}"),
        ("{{ if .Message }}x{{ end .Message }}", "1: unexpected {{ end .Message }}"),
        ("{{ if .Message }}x{{ else range }}{{ end }}", "1: unsupported action {{ else range }}"),
        ("\n{{ if .Message }}x\n", "2: {{ if .Message }} has no {{ end }}"),
        ("a\n{{ .Message", "2: unclosed action"),
        ("{{/* never closed }}", "1: unclosed comment"),
        ("{{/* x */ }}", "1: comment ends before closing delimiter"),
    ],
)
def test_anything_else_is_refused_with_file_line_and_action(tmp_path, source, why):
    assert refusal(tmp_path, {"503.html": source}).startswith(f"unable to load error pages: 503.html:{why}")


def test_a_page_that_is_not_a_status_must_parse_too(tmp_path):
    assert refusal(tmp_path, {"503.html": KAMAL_PAGE, "index.html": "{{ .Status }}"}) == (
        f"unable to load error pages: index.html:1: unknown field .Status in {{{{ .Status }}}}{ONLY_MESSAGE}"
    )


# --- loading ------------------------------------------------------------------------------------


def test_a_missing_directory_is_refused(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError) as refused:
        load_error_pages(str(missing))
    assert str(refused.value) == f"unable to load error pages: {missing}: No such file or directory"


def test_a_file_instead_of_a_directory_is_refused(tmp_path):
    page = tmp_path / "503.html"
    page.write_text(KAMAL_PAGE)
    with pytest.raises(ValueError) as refused:
        load_error_pages(str(page))
    assert str(refused.value) == f"unable to load error pages: {page}: Not a directory"


def test_an_empty_directory_is_refused(tmp_path):
    assert refusal(tmp_path, {}) == f"unable to load error pages: {tmp_path}: no .html files"


def test_a_directory_without_html_files_is_refused(tmp_path):
    files = {"notes.txt": "x", "503.htm": KAMAL_PAGE, "503.html.bak": KAMAL_PAGE}
    assert refusal(tmp_path, files) == f"unable to load error pages: {tmp_path}: no .html files"


def test_a_page_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    files = {"503.html": b"<p>\n\xff\xfe</p>"}
    assert refusal(tmp_path, files) == "unable to load error pages: 503.html:2: not UTF-8"


def test_a_directory_named_like_a_page_is_refused(tmp_path):
    (tmp_path / "500.html").mkdir()
    assert (
        refusal(tmp_path, {"503.html": KAMAL_PAGE}) == "unable to load error pages: 500.html: Is a directory"
    )


def test_only_status_named_pages_are_served(tmp_path):
    files = {name: f"page {name}" for name in ("503.html", "404.html", "index.html", "200.html", "5030.html")}
    pages = load(tmp_path, files)
    assert pages.directory == str(tmp_path)
    assert pages.statuses == frozenset({404, 503})
    assert pages.render(404) == b"page 404.html"
    assert pages.render(200) is None
    assert pages.render(502, "message") is None


def test_rendered_holds_every_page_with_an_empty_message(tmp_path):
    pages = load(tmp_path, {"503.html": KAMAL_PAGE, "502.html": "{{ if .Message }}x{{ else }}down{{ end }}"})
    assert pages.rendered() == {503: b"Custom Maintenance Page: ", 502: b"down"}
    pages.rendered()[503] = b"changed"
    assert pages.rendered()[503] == b"Custom Maintenance Page: "


def test_loaded_pages_are_immutable(tmp_path):
    pages = load(tmp_path, {"503.html": KAMAL_PAGE})
    with pytest.raises(FrozenInstanceError):
        pages.directory = "elsewhere"  # type: ignore[misc]


# --- a stopped service's 503 --------------------------------------------------------------------

GENERIC_503 = "The application is not available right now."


def test_stop_page_renders_the_custom_503_with_the_message(tmp_path):
    pages = load(tmp_path, {"503.html": KAMAL_PAGE})
    assert stop_page(pages, "Testing Maintence Mode") == b"Custom Maintenance Page: Testing Maintence Mode"
    assert stop_page(pages, "") == b"Custom Maintenance Page: "


@pytest.mark.parametrize("has_pages", [True, False])
def test_stop_page_without_a_custom_503_shows_the_escaped_message_on_the_built_in_page(tmp_path, has_pages):
    pages = load(tmp_path, {"404.html": "not found"}) if has_pages else None
    body = stop_page(pages, "Back at <5pm> & 'soon'").decode()
    assert "<h1>503 Service Unavailable</h1>" in body
    assert "<p>Back at &lt;5pm&gt; &amp; &#39;soon&#39;</p>" in body
    assert GENERIC_503 not in body


def test_stop_page_without_a_message_is_the_built_in_503(tmp_path):
    body = stop_page(None, "")
    assert GENERIC_503 in body.decode()
    assert error_response(503).endswith(b"\r\n\r\n" + body)
