"""How many cores this process may use: the CPUs it may run on, or fewer where a cgroup's CPU quota (a
container's `docker run --cpus`, a Kubernetes CPU limit) grants less time than that.

ONNX Runtime sizes its thread pool from the cores the machine has, not from the quota: in a pod limited to 2
CPUs on a 64-core node it would start a thread per physical core and be throttled. The service and
`service.predict` size their session threads and decoding processes from `usable_cores` instead.

A process's quota is the smallest on its cgroup's path (a parent's quota binds its children): cgroup v2's
`cpu.max` ("max 100000" or "200000 100000": quota and period in microseconds) or v1's `cpu.cfs_quota_us` (-1:
none) over `cpu.cfs_period_us`, found through /proc/self/cgroup.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def affinity() -> int:
    """CPUs this process may run on (os.sched_getaffinity; every CPU where the platform has no affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _folders(mount: Path, path: str) -> Iterator[Path]:
    """The process's cgroup folder under `mount` and each parent up to `mount`. In a container the mount is the
    container's own cgroup, and the path /proc/self/cgroup names may not exist under it: then `mount` alone."""
    folder = mount / path.lstrip("/")
    if not folder.is_dir():
        folder = mount
    while True:
        yield folder
        if folder == mount or mount not in folder.parents:
            return
        folder = folder.parent


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota(folder: Path, v2: bool) -> float | None:
    """CPUs' worth of time one cgroup folder grants, None for no quota (or no file)."""
    if v2:
        text = _read(folder / "cpu.max")
        if text is None or text.split()[0] == "max":
            return None
        quota, period = text.split()
    else:
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is None or period is None or int(quota) < 0:
            return None
    return int(quota) / int(period)


def cpu_quota(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """CPUs' worth of time the cgroups of this process grant it (the smallest quota on its path), or None.
    `root` and `proc_cgroup` default to CGROUP_ROOT and PROC_CGROUP, read at each call (tests point them at a
    folder of cgroup files of their own)."""
    root = root or CGROUP_ROOT
    text = _read(proc_cgroup or PROC_CGROUP)
    if text is None:  # not Linux
        return None
    quotas = []
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: mounted at the root, or at unified/ beside v1 hierarchies
            mounts = [m for m in (root, root / "unified") if (m / "cgroup.controllers").exists()]
            v2 = True
        elif "cpu" in controllers.split(","):
            mounts = [m for m in (root / name for name in V1_CPU_MOUNTS) if m.is_dir()][:1]
            v2 = False
        else:
            continue
        for mount in mounts:
            quotas += [q for f in _folders(mount, path) if (q := _quota(f, v2)) is not None]
    return min(quotas) if quotas else None


def usable_cores() -> int:
    """The cores this process may keep busy: its affinity, or its CPU quota rounded down (at least 1) where
    that is less, so that threads sized by it are not throttled."""
    cores, quota = affinity(), cpu_quota()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def session_threads(processes: int = 1) -> int:
    """ONNX Runtime's intra-op threads for one of `processes` that share this process's cores: 0 (its own
    default, a thread per physical core) for a lone process that may use every core, else a share of
    `usable_cores`."""
    cores = usable_cores()
    if processes <= 1 and cores == affinity():
        return 0
    return max(1, cores // max(processes, 1))
