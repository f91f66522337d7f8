"""README documents every flag and environment variable that exists (the Honest docs rule, checked)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from thruster.config import ThrusterConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# remove, list, resume and rollout stop take no flags
@pytest.mark.parametrize("command", ["run", "deploy", "pause", "stop", "rollout deploy", "rollout set"])
def test_every_pyproxy_flag_is_in_the_readme(command):
    help_text = subprocess.run(
        [sys.executable, "-m", "proxy", *command.split(), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text)) - {"--help"}
    assert flags, help_text
    missing = sorted(flag for flag in flags if f"`{flag}`" not in README and f"`{flag} " not in README)
    assert not missing, f"pyproxy {command} flags missing from README: {missing}"


def test_every_pyproxy_command_is_in_the_readme():
    from proxy.cli import COMMANDS, ROLLOUT_COMMANDS

    missing = [name for name in COMMANDS if f"`{name}" not in README and f"|{name}" not in README]
    missing += [name for name in ROLLOUT_COMMANDS if f"`rollout {name}" not in README]
    assert not missing, f"pyproxy commands missing from README: {missing}"


def test_every_pythrust_variable_is_in_the_readme():
    names = [field.name.upper() for field in dataclasses.fields(ThrusterConfig)]
    names = ["TLS_DOMAIN" if name == "TLS_DOMAINS" else name for name in names]
    missing = [name for name in names if f"| `{name}` |" not in README]
    assert not missing, f"pythrust variables missing from README: {missing}"
