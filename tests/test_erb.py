"""ERB in deploy.yml: Ruby's own `erb` when installed, else pydeploy's subset; both render alike."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deployer import erb

PATH = os.environ.get("PATH", os.defpath)


@pytest.fixture(params=["ruby", "subset"])
def mode(request) -> dict[str, str]:
    """The environment that selects the renderer: Ruby's erb, or the subset (`PYDEPLOY_ERB=subset`)."""
    if request.param == "ruby" and shutil.which("erb") is None:
        pytest.skip("Ruby's erb is not installed")
    return {"PATH": PATH} if request.param == "ruby" else {"PATH": PATH, "PYDEPLOY_ERB": "subset"}


def render(mode: dict[str, str], text: str, cwd: Path | None = None, **environ: str) -> str:
    return erb.render(text, "config/deploy.yml", {**mode, **environ}, cwd)


def failure(mode: dict[str, str], text: str, cwd: Path | None = None, **environ: str) -> str:
    with pytest.raises(erb.TemplateError) as caught:
        render(mode, text, cwd, **environ)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "environ", "rendered"),
    [
        ('<%= ENV["A"] %>', {"A": "set"}, "set"),
        ("<%= ENV['A'] %>", {"A": "set"}, "set"),
        ("<%= ENV['A'] %>", {}, ""),
        ("<%=ENV['A']%>", {"A": "set"}, "set"),
        ('<%= ENV.fetch("A") %>', {"A": "set"}, "set"),
        ('<%= ENV.fetch("A", "default") %>', {}, "default"),
        ("<%= ENV.fetch('A', 'default') %>", {"A": "set"}, "set"),
        ("<%= ENV.fetch('A') { 'block' } %>", {}, "block"),
        ("<%= ENV['CI_REGISTRY_USER'] || 'me' %>", {}, "me"),
        ("<%= ENV['CI_REGISTRY_USER'] || 'me' %>", {"CI_REGISTRY_USER": "ci"}, "ci"),
        ('<%= ENV["A"] || ENV["B"] || "d" %>', {"B": "b"}, "b"),
        ('<%= ENV["A"] || ENV["B"] || "d" %>', {}, "d"),
        ("<%= ENV['A'] || 'd' %>", {"A": ""}, ""),  # an empty value is not nil in Ruby
        ("<%= 'a\\'b' %>", {}, "a'b"),
        ('<%= "tab\\there" %>', {}, "tab\there"),
        ("<%= `echo hi` %>", {}, "hi\n"),
        ("<%= `echo hi`.strip %>", {}, "hi"),
        ("<%= `printf ' hi \\n\\n'`.chomp %>", {}, " hi \n"),
        ("<%= %x(echo $A).strip %>", {"A": "from env"}, "from env"),
        ("<%= %x{echo braces}.chomp %>", {}, "braces"),
        ("<%= ENV['A'] || `echo fallback`.strip %>", {}, "fallback"),
        ("a<%# a comment %>b", {}, "ab"),
        ("<%= ENV['A'] -%>\nnext", {"A": "1"}, "1next"),
        ("<%= ENV['A'] %>\nnext", {"A": "1"}, "1\nnext"),
        ("<%% literal %>", {}, "<% literal %>"),
        ("${A} $${A} ${B:-dflt}", {"A": "1"}, "1 ${A} dflt"),
        ("${A}", {"A": "<%= 1 %>"}, "<%= 1 %>"),  # a value is never rendered again
    ],
)
def test_both_renderers_agree(mode, text, environ, rendered):
    assert render(mode, text, **environ) == rendered


def test_commands_run_in_the_project_root(mode, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert render(mode, "<%= `pwd`.strip %>", tmp_path) == str(tmp_path)
    assert render(mode, "<%= `git rev-parse --is-inside-work-tree`.strip %>", tmp_path) == "true"


def test_fetch_of_an_unset_variable_names_it(mode):
    message = failure(mode, 'a: 1\nb: <%= ENV.fetch("NOPE") %>\n')
    assert message.startswith("config/deploy.yml:2: ")
    assert "NOPE" in message


def test_ruby_renders_the_rest_of_erb():
    if shutil.which("erb") is None:
        pytest.skip("Ruby's erb is not installed")
    text = "<% if ENV['CI'] -%>\nci: <%= [1, 2].sum %>\n<% end -%>\n"
    assert erb.render(text, "f", {"PATH": PATH, "CI": "1"}) == "ci: 3\n"
    assert erb.render(text, "f", {"PATH": PATH}) == ""


def test_ruby_errors_name_the_file_and_line():
    if shutil.which("erb") is None:
        pytest.skip("Ruby's erb is not installed")
    with pytest.raises(erb.TemplateError) as caught:
        erb.render("a: 1\nb: <%= nope( %>\n", "config/deploy.yml", {"PATH": PATH})
    assert str(caught.value).startswith("config/deploy.yml:")
    assert "syntax error" in str(caught.value)


def test_ruby_gets_utf8_without_a_locale_in_the_environment():
    if shutil.which("erb") is None:
        pytest.skip("Ruby's erb is not installed")
    assert erb.render("héllo <%= ENV['X'] %>", "f", {"PATH": PATH, "X": "ü"}) == "héllo ü"


@pytest.mark.parametrize(
    "tag",
    [
        '<% if ENV["CI"] %>',
        '<%= ENV["A"].upcase %>',
        "<%= [1, 2].sum %>",
        "<%= ENV['A'] || %>",
        "<%= ENV['A'] ENV['B'] %>",
    ],
)
def test_subset_refuses_other_ruby_by_file_and_line(tag):
    message = failure({"PYDEPLOY_ERB": "subset"}, f"a: 1\n# {tag}\n", A="a")
    assert message.startswith(f"config/deploy.yml:2: unsupported ERB {tag}: other Ruby is not supported")
    assert "ENV['NAME'] || 'default'" in message  # says what is supported


def test_subset_refuses_interpolation():
    subset = {"PYDEPLOY_ERB": "subset"}
    assert "interpolation" in failure(subset, "<%= \"#{ENV['A']}\" %>")
    assert "interpolation" in failure(subset, "<%= `echo #{1}` %>")


def test_subset_failing_command_is_an_error_with_its_status():
    message = failure({"PATH": PATH, "PYDEPLOY_ERB": "subset"}, "a: 1\nb: <%= `echo oops >&2; exit 3` %>")
    assert message == "config/deploy.yml:2: command `echo oops >&2; exit 3` failed with status 3: oops"


def test_subset_strip_of_nil_is_an_error():
    message = failure({"PYDEPLOY_ERB": "subset"}, "<%= ENV['A'].strip %>")
    assert message.startswith("config/deploy.yml:1: cannot call .strip on nil")


def test_subset_does_not_run_commands_after_a_value():
    assert render({"PYDEPLOY_ERB": "subset"}, "<%= ENV['A'] || `exit 1` %>", A="a") == "a"


@pytest.mark.parametrize(
    ("text", "message"), [("a: <%= ENV", "'<%' is never closed"), ("a: ${A", "'${' is never closed")]
)
def test_unclosed_tags(mode, text, message):
    assert failure(mode, text, A="1") == f"config/deploy.yml:1: {message}"


def test_unset_shell_variable_is_an_error_naming_it(mode):
    assert failure(mode, "a: 1\nb: ${APP_IMAGE}").startswith(
        "config/deploy.yml:2: environment variable APP_IMAGE is not set"
    )


def test_bad_variable_syntax(mode):
    assert failure(mode, "a: ${1A}").startswith("config/deploy.yml:1: cannot read ${1A}")
