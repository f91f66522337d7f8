"""The README's first command keeps working: the demo deploys two versions and exits cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script_deploys_v1_then_v2():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DEMO_PORT": str(port)}
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--check"], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"version": "v1"' in done.stdout
    assert '"version": "v2"' in done.stdout
    assert done.stdout.rstrip().endswith("demo OK")
