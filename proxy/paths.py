"""Where `pyproxy run` and its admin clients find the socket and the saved state.

The program answers to two names, `pyproxy` and `kamal-proxy` (the same program; Kamal calls it by the
second). Each name keeps its own defaults, so `kamal-proxy` finds what kamal-proxy would: its socket
`kamal-proxy.sock` and its state in `~/.config/kamal-proxy/kamal-proxy.state` (Kamal mounts its volume there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PYPROXY = "pyproxy"
KAMAL_PROXY = "kamal-proxy"


def program_name() -> str:
    """The name this process was started by: `kamal-proxy`, else `pyproxy` (also for `python -m proxy`)."""
    return KAMAL_PROXY if Path(sys.argv[0]).name == KAMAL_PROXY else PYPROXY


def socket_path() -> Path:
    """`$PYPROXY_SOCKET` or `$KAMAL_PROXY_SOCKET`, else `$XDG_RUNTIME_DIR/<name>.sock`, else in the temp dir
    as Go's `os.TempDir()` names it (`$TMPDIR`, else /tmp), where kamal-proxy looks; Python's `tempfile`
    would also read `$TEMP` and `$TMP`, and importing it costs each admin command 2 ms."""
    explicit = os.environ.get("PYPROXY_SOCKET") or os.environ.get("KAMAL_PROXY_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime or os.environ.get("TMPDIR") or "/tmp") / f"{program_name()}.sock"


def data_dir() -> Path:
    """`$XDG_CONFIG_HOME/<name>`, else `~/.config/<name>`."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / program_name()


def state_path() -> Path:
    return data_dir() / f"{program_name()}.state"
