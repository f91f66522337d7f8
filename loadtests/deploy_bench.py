"""How long `pydeploy deploy` takes for the small test app on the two test-bed hosts, step by step.

Brings the test bed up (tests/testbed: two SSH hosts with their own dockerd, a registry, the pyproxy
image and the busybox app), runs `pydeploy setup` with v1, then times `pydeploy deploy -P` of v2 (the
image already on the registry: the steps the issue's 10 s target is about) and prints pydeploy's own
step table with the total. Needs root, as the test bed does. The bed is left up with --keep.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_pydeploy import project, pydeploy  # noqa: E402
from tests.testbed.fixture import bring_down, bring_up  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the test bed up afterwards")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("deploy_bench.py: needs root (the test bed needs namespaces and dockerd)", file=sys.stderr)
        return 2
    bed = bring_up()
    try:
        bed.reset()
        with tempfile.TemporaryDirectory() as tmp:
            app = project(bed, Path(tmp) / "app")
            setup = pydeploy(bed, app, "setup", "--version", "v1", "-P")
            if setup.returncode != 0:
                print(setup.stdout + setup.stderr, file=sys.stderr)
                return 1
            started = time.monotonic()
            deploy = pydeploy(bed, app, "deploy", "--version", "v2", "-P")
            total = time.monotonic() - started
            print(deploy.stdout)
            if deploy.returncode != 0:
                print(deploy.stderr, file=sys.stderr)
                return 1
            print(f"pydeploy deploy -P of v2 to {len(bed.hosts)} hosts: {total:.1f}s in all (target: < 10 s)")
    finally:
        if not args.keep:
            bring_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
