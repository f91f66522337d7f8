"""Where `pyproxy run` and its admin clients find the socket and the saved state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def socket_path() -> Path:
    """`$PYPROXY_SOCKET`, else `$XDG_RUNTIME_DIR/pyproxy.sock`, else the temp dir."""
    explicit = os.environ.get("PYPROXY_SOCKET")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime or tempfile.gettempdir()) / "pyproxy.sock"


def data_dir() -> Path:
    """`$XDG_CONFIG_HOME/pyproxy`, else `~/.config/pyproxy`."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "pyproxy"


def state_path() -> Path:
    return data_dir() / "pyproxy.state"
