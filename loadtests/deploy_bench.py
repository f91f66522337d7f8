"""How long `pydeploy setup` and `pydeploy deploy` take on the two test-bed hosts, step by step.

Brings the test bed up (tests/testbed: two SSH hosts with their own dockerd, a registry, the pyproxy
image and the busybox app), runs `pydeploy setup` with v1, then times `pydeploy deploy -P` of v2 (the
image already on the registry: the steps the 10 s target is about) and prints pydeploy's own step tables
with the totals. `--app minimal` (default) is the one-role test app; `--app kbs` is the Rails app's Kamal
files of tests/apps/kbs (two accessories booted by setup, a job role, asset bridging, error pages, a
hook). Needs root, as the test bed does. The bed is left up with --keep.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_pydeploy import project, pydeploy  # noqa: E402
from tests.test_rails_app import checkout, kbs  # noqa: E402
from tests.testbed.fixture import bring_down, bring_up  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the test bed up afterwards")
    ap.add_argument("--app", choices=("minimal", "kbs"), default="minimal", help="which app to deploy")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("deploy_bench.py: needs root (the test bed needs namespaces and dockerd)", file=sys.stderr)
        return 2
    bed = bring_up()
    try:
        bed.reset()
        with tempfile.TemporaryDirectory() as tmp:
            if args.app == "kbs":
                app = checkout(Path(tmp) / "kbs")
                run = functools.partial(kbs, bed, app)
            else:
                app = project(bed, Path(tmp) / "app")
                run = functools.partial(pydeploy, bed, app)
            for command, version in (("setup", "v1"), ("deploy", "v2")):
                started = time.monotonic()
                done = run(command, "--version", version, "-P")
                total = time.monotonic() - started
                print(done.stdout)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                print(f"pydeploy {command} -P of {version} to {len(bed.hosts)} hosts: {total:.1f}s in all\n")
    finally:
        if not args.keep:
            bring_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
