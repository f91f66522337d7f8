"""How many CPUs this process may use: the default number of workers.

The CPUs the scheduler lets it run on (`sched_getaffinity`: `taskset`, `docker run --cpuset-cpus`),
capped by a cgroup CPU quota (`docker run --cpus`, a Kubernetes limit) rounded up, and at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    count = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_limit()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its parents, if any: cgroup v2's
    `cpu.max`, else v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: walk from the process's own cgroup up to the root
            directory = root / path.lstrip("/")
            while True:
                limits.append(_v2_limit(directory / "cpu.max"))
                if directory == root or root not in directory.parents:
                    break
                directory = directory.parent
        elif "cpu" in controllers.split(","):
            for mount in (root / "cpu", root / "cpu,cpuacct"):
                limits.append(_v1_limit(mount))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _v2_limit(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(mount: Path) -> float | None:
    try:
        quota = int((mount / "cpu.cfs_quota_us").read_text())
        period = int((mount / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
