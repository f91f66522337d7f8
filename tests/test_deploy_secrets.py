"""pydeploy's secrets: Kamal's `.kamal/secrets*` dotenv files, the referenced-secret check, redaction."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from deployer.config import ConfigError, load_config
from deployer.secrets import check_referenced, load_secrets, redact, redact_data, secret_files


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def secrets_from(root: Path, text: str, environ=None, destination=None) -> dict[str, str]:
    write(root, ".kamal/secrets-common" if destination else ".kamal/secrets", text)
    return load_secrets(root, destination, {} if environ is None else environ)


def secrets_error(root: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        secrets_from(root, text)
    return str(caught.value)


# --- dotenv syntax


def test_values_quotes_comments_and_export(tmp_path):
    secrets = secrets_from(
        tmp_path,
        r"""
        # a comment line
        PLAIN=value
          SPACED = spaced value   # a trailing comment
        DOUBLE="a \"quoted\" #not a comment"  # a comment
        SINGLE='literal $HOME \n'
        export EXPORTED=yes
        EMPTY=
        HASH=abc#def

        MULTI="line one
        line two"
        NEWLINE="one\ntwo"
        UNQUOTED_ESCAPE=one\ntwo
        """,
    )
    assert secrets == {
        "PLAIN": "value",
        "SPACED": "spaced value",
        "DOUBLE": 'a "quoted" #not a comment',
        "SINGLE": r"literal $HOME \n",
        "EXPORTED": "yes",
        "EMPTY": "",
        "HASH": "abc#def",
        "MULTI": "line one\nline two",
        "NEWLINE": "one\ntwo",
        "UNQUOTED_ESCAPE": "onentwo",
    }


def test_variables_come_from_the_environment_and_earlier_keys(tmp_path):
    secrets = secrets_from(
        tmp_path,
        r"""
        A=$REGION
        B=${REGION}-1
        C="prefix-$A"
        D=${UNSET_VARIABLE}
        E=\$REGION
        SHADOWED=from-file
        F=$SHADOWED
        """,
        environ={"REGION": "eu", "SHADOWED": "from-env"},
    )
    assert secrets == {
        "A": "eu",
        "B": "eu-1",
        "C": "prefix-eu",
        "D": "",
        "E": "$REGION",
        "SHADOWED": "from-file",
        "F": "from-file",
    }


def test_command_substitution_runs_through_the_shell(tmp_path):
    (tmp_path / "token.txt").write_text("from-file\n")
    secrets = secrets_from(
        tmp_path,
        r"""
        HI=$(echo hi)
        CHOMPED=$(printf 'a\n\n')
        IN_ROOT=$(cat token.txt)
        FROM_ENV=$(echo $REGION)
        TOKEN=abc
        FROM_KEY=$(echo $TOKEN | tr a-z A-Z)
        SHELL_EXPANDS=$(echo \$REGION)
        NESTED="[$(echo $(echo deep))]"
        LITERAL=\$(echo no)
        QUOTED='$(echo no)'
        """,
        environ={"REGION": "eu", "PATH": "/usr/bin:/bin"},
    )
    assert secrets == {
        "HI": "hi",
        "CHOMPED": "a\n",
        "IN_ROOT": "from-file",
        "FROM_ENV": "eu",
        "TOKEN": "abc",
        "FROM_KEY": "ABC",
        "SHELL_EXPANDS": "eu",
        "NESTED": "[deep]",
        "LITERAL": "$(echo no)",
        "QUOTED": "$(echo no)",
    }


def test_commands_see_the_destination(tmp_path):
    assert secrets_from(tmp_path, "D=$(echo $KAMAL_DESTINATION)\n", destination="staging") == {"D": "staging"}


def test_failing_command_names_file_and_line_without_substituted_secrets(tmp_path):
    message = secrets_error(tmp_path, "A=topsecret\nB=$(echo $A; exit 3)\n")
    assert message == ".kamal/secrets:2: $(echo $A; exit 3) failed with exit status 3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "A=1\nnot an assignment\n",
            ".kamal/secrets:2: expected KEY=value (a multi-line value must be quoted)",
        ),
        ('A=1\nB="open\nC=2\n', '.kamal/secrets:2: the " quote of B is never closed'),
        ("A='x' y\n", ".kamal/secrets:1: unexpected text after the closing quote of A"),
        ("A=$(echo\n", ".kamal/secrets:1: $( is never closed"),
        ('A="one\ntwo"\nB\n', ".kamal/secrets:3: expected KEY=value (a multi-line value must be quoted)"),
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path, text, message):
    assert secrets_error(tmp_path, text) == message


# --- which files


def test_common_then_plain_file(tmp_path):
    write(tmp_path, ".kamal/secrets-common", "SHARED=common\nOVERRIDDEN=common\n")
    write(tmp_path, ".kamal/secrets", "OVERRIDDEN=plain\n")
    write(tmp_path, ".kamal/secrets.staging", "OVERRIDDEN=staging\nSTAGING_ONLY=1\n")
    assert load_secrets(tmp_path, None, {}) == {"SHARED": "common", "OVERRIDDEN": "plain"}


def test_destination_file_overrides_common_and_the_plain_file_is_not_read(tmp_path):
    write(tmp_path, ".kamal/secrets-common", "SHARED=common\nOVERRIDDEN=common\n")
    write(tmp_path, ".kamal/secrets", "PLAIN_ONLY=1\n")
    write(tmp_path, ".kamal/secrets.staging", "OVERRIDDEN=staging\n")
    assert load_secrets(tmp_path, "staging", {}) == {"SHARED": "common", "OVERRIDDEN": "staging"}


def test_missing_files_are_skipped(tmp_path):
    assert load_secrets(tmp_path, "staging", {}) == {}


def test_secret_files():
    assert secret_files(None) == (".kamal/secrets-common", ".kamal/secrets")
    assert secret_files("staging") == (".kamal/secrets-common", ".kamal/secrets.staging")


# --- secrets the config references


CONFIG = """
service: app
image: acme/app
servers:
  web: [10.0.0.1]
  jobs:
    hosts: [10.0.0.2]
    env:
      secret: [JOBS_TOKEN]
registry:
  username: acme
  password: [KAMAL_REGISTRY_PASSWORD]
env:
  secret: [DATABASE_URL, MASTER_KEY:RAILS_MASTER_KEY]
"""
ALL = {"KAMAL_REGISTRY_PASSWORD": "pw", "DATABASE_URL": "db", "RAILS_MASTER_KEY": "mk", "JOBS_TOKEN": "jt"}


def config_for(root: Path, destination: str | None = None):
    write(root, "config/deploy.yml", CONFIG)
    if destination:
        write(root, f"config/deploy.{destination}.yml", "")
    return load_config(root, destination, "v1", {})


def test_all_referenced_secrets_defined(tmp_path):
    check_referenced(config_for(tmp_path), ALL)


@pytest.mark.parametrize(
    ("missing", "used_by"),
    [
        ("KAMAL_REGISTRY_PASSWORD", "registry.password"),
        ("DATABASE_URL", "env.secret"),
        ("RAILS_MASTER_KEY", "env.secret"),
        ("JOBS_TOKEN", "servers.jobs.env.secret"),
    ],
)
def test_missing_referenced_secret_names_it_and_the_files(tmp_path, missing, used_by):
    secrets = {key: value for key, value in ALL.items() if key != missing}
    with pytest.raises(ConfigError) as caught:
        check_referenced(config_for(tmp_path), secrets)
    assert str(caught.value) == (
        f"Secret {missing} (used by {used_by}) is not defined in .kamal/secrets-common or .kamal/secrets"
    )


def test_missing_secrets_with_a_destination_are_all_listed(tmp_path):
    with pytest.raises(ConfigError) as caught:
        check_referenced(config_for(tmp_path, "staging"), {"DATABASE_URL": "db", "RAILS_MASTER_KEY": "mk"})
    assert str(caught.value).splitlines() == [
        "Secret KAMAL_REGISTRY_PASSWORD (used by registry.password) is not defined in "
        ".kamal/secrets-common or .kamal/secrets.staging",
        "Secret JOBS_TOKEN (used by servers.jobs.env.secret) is not defined in "
        ".kamal/secrets-common or .kamal/secrets.staging",
    ]


# --- redaction


def test_redact_replaces_every_secret_value():
    secrets = {"A": "s3cret", "B": "hunter2"}
    assert redact("login -p s3cret && echo hunter2 s3cret", secrets) == (
        "login -p [REDACTED] && echo [REDACTED] [REDACTED]"
    )


def test_redact_replaces_longer_values_first_and_ignores_empty_ones():
    assert redact("token=abcdef", {"SHORT": "abc", "LONG": "abcdef", "EMPTY": ""}) == "token=[REDACTED]"
    assert redact("nothing to hide", {}) == "nothing to hide"


def test_printed_config_has_secret_values_redacted(tmp_path):
    write(
        tmp_path, "config/deploy.yml", CONFIG + "proxy: {host: '${APP_HOST}'}\naliases: {db: 'psql ${DB}'}\n"
    )
    config = load_config(
        tmp_path, None, "v1", {"APP_HOST": "app.example.com", "DB": "postgres://u:pw@db/app"}
    )
    printed = yaml.safe_dump(redact_data(config.as_dict(), {"DATABASE_URL": "postgres://u:pw@db/app"}))
    assert "pw@db" not in printed
    assert re.search(r"db: psql \[REDACTED\]", printed)
    assert "app.example.com" in printed
