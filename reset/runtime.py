"""The process's share of the machine: CPU cores from the affinity mask and the cgroup quota.

In a pod, os.cpu_count() is the node's core count, not the pod's CPU limit; torch would start that
many threads and thrash. `cpu_quota()` is the number of cores this process may really use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_v2_limit(root: Path) -> float | None:
    """cpu.max of the process's own cgroup (v2): "max 100000" (no limit) or "<quota> <period>"."""
    rel = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[0] == "0":
                rel = parts[2].lstrip("/")
    except OSError:
        pass
    for d in ([root / rel] if rel else []) + [root]:
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        return int(quota) / int(period)
    return None


def _cgroup_v1_limit(root: Path) -> float | None:
    for d in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((d / "cpu.cfs_quota_us").read_text())
            period = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
    return None


def cpu_quota(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: min(affinity mask, ceil(cgroup CPU quota)), at least 1.
    RESET_NUM_THREADS overrides it."""
    env = os.environ.get("RESET_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_v2_limit(root)
    if limit is None:
        limit = _cgroup_v1_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def set_torch_threads() -> int:
    """Set torch's intra-op threads to the CPU quota; returns the number set."""
    import torch

    n = cpu_quota()
    torch.set_num_threads(n)
    return n
