"""How many cores this process may really use: affinity mask and cgroup CPU quota, not os.cpu_count().

A CI container often sees every core of its host in os.cpu_count() while its cgroup grants two;
starting one thread per host core then oversubscribes the grant and training slows down.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_v2_quota(root: Path) -> float | None:
    """cpu.max of this process's cgroup v2 ("max 100000" or "200000 100000") in cores."""
    try:
        line = (root / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(line) != 2 or line[0] == "max":
        return None
    return int(line[0]) / int(line[1])


def _cgroup_v1_quota(root: Path) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us of a cgroup v1 cpu controller, in cores."""
    try:
        quota = int((root / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota (cores, may be fractional) of this process's cgroup, or None when unlimited."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":                       # cgroup v2: one unified hierarchy
            base = Path(mount) / rel
            for folder in (base, *base.parents):    # a parent's limit binds its children too
                quotas.append(_cgroup_v2_quota(folder))
                if folder == Path(mount):
                    break
        elif "cpu" in controllers.split(","):
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                quotas.append(_cgroup_v1_quota(Path(mount) / name / rel))
                quotas.append(_cgroup_v1_quota(Path(mount) / name))
    quotas = [q for q in quotas if q]
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """Cores this process may use: its affinity mask, capped by the cgroup quota (rounded up), >= 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
