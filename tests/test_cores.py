"""core/cores.py: the cores a CPU quota leaves this process, read from cgroup files as the kernel writes them
(cgroup v1 and v2, in a temporary folder, on any machine), and, where this machine lets a test make one (cgroup
v1, root), a real cgroup with a quota of one CPU, in which ONNX Runtime's sessions get one thread.

Torch-free: runs in .ci/serving-pythons too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from core import cores
from core.cores import affinity, cpu_quota, session_threads, usable_cores
from service.rows import default_workers
from service.runtime import Graph
from tests.tiny_onnx import tiny_graph

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")


def test_v2_quota_is_the_smallest_on_the_process_path(tmp_path):
    root = tmp_path / "cgroup"
    write(root, cgroup__controllers="cpu memory", cpu__max="max 100000")
    write(root / "kubepods", cpu__max="350000 100000")
    write(root / "kubepods" / "pod1", cpu__max="150000 100000")
    write(root / "kubepods" / "pod1" / "app", cpu__max="max 100000")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/kubepods/pod1/app\n")
    assert cpu_quota(root, proc) == 1.5
    proc.write_text("0::/kubepods\n")
    assert cpu_quota(root, proc) == 3.5
    proc.write_text("0::/\n")
    assert cpu_quota(root, proc) is None


def test_v1_quota_and_a_container_whose_path_is_not_under_its_mount(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    write(root / "memory")
    proc = tmp_path / "self-cgroup"
    # inside a container the hierarchy is mounted at its own cgroup: /docker/<id> does not exist under the mount
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/docker/abc\n")
    assert cpu_quota(root, proc) is None
    write(root / "cpu,cpuacct", cpu__cfs_quota_us="200000", cpu__cfs_period_us="100000")
    assert cpu_quota(root, proc) == 2.0
    write(root / "cpu,cpuacct" / "docker" / "abc", cpu__cfs_quota_us="50000", cpu__cfs_period_us="100000")
    assert cpu_quota(root, proc) == 0.5
    assert cpu_quota(root, tmp_path / "no-such-file") is None


def pod(tmp_path: Path, version: str, cpus: float) -> None:
    """A container's cgroup files as the kernel shows them inside a Kubernetes pod limited to `cpus` CPUs (the
    limit is on the pod's cgroup; the container's own has none), written under tmp_path, and core.cores pointed
    at them."""
    root, path, quota = tmp_path / "cgroup", "/kubepods/pod1/app", str(round(cpus * 100_000))
    if version == "v2":
        write(root, cgroup__controllers="cpuset cpu io memory hugetlb pids rdma misc", cpu__max="max 100000")
        write(root / "kubepods" / "pod1", cpu__max=f"{quota} 100000")
        write(root / "kubepods" / "pod1" / "app", cpu__max="max 100000")
        proc = f"0::{path}\n"
    else:
        mount = root / "cpu,cpuacct"
        write(mount, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
        write(mount / "kubepods" / "pod1", cpu__cfs_quota_us=quota, cpu__cfs_period_us="100000")
        write(mount / "kubepods" / "pod1" / "app", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
        write(root / "memory")
        proc = f"5:memory:{path}\n3:cpu,cpuacct:{path}\n0::{path}\n"
    (tmp_path / "self-cgroup").write_text(proc)
    cores.CGROUP_ROOT, cores.PROC_CGROUP = root, tmp_path / "self-cgroup"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_fractional_cpu_limit_is_rounded_down_wherever_cores_are_counted(tmp_path, monkeypatch, version):
    """A pod limited to 1.5 CPUs on a node of 4: one session thread and one decoding process, as `usable_cores`
    promises (the quota rounded down, at least 1; docs/deployment.md): two threads would share 1.5 CPUs' worth of
    time and be throttled. 2.5 CPUs: two. The service, the offline command and each session count the same way."""
    monkeypatch.setattr(cores, "CGROUP_ROOT", cores.CGROUP_ROOT)  # restored after pod() points them elsewhere
    monkeypatch.setattr(cores, "PROC_CGROUP", cores.PROC_CGROUP)
    monkeypatch.setattr(cores, "affinity", lambda: 4)
    graph = tiny_graph(tmp_path / "a.onnx", seed=1)
    for cpus, expected in ((1.5, 1), (2.5, 2)):
        pod(tmp_path, version, cpus)
        assert cpu_quota() == cpus
        assert usable_cores() == expected and default_workers() == expected
        assert session_threads(1) == Graph(str(graph), "cpu").cpu_threads == expected  # not 0: ONNX Runtime's own
        assert session_threads(2) == 1


def test_without_a_quota_the_cores_are_the_affinity_and_onnx_runtime_chooses():
    if cpu_quota() is not None:
        pytest.skip(f"this process runs under a CPU quota of {cpu_quota()}")
    assert usable_cores() == affinity() == len(os.sched_getaffinity(0))
    assert session_threads(1) == 0
    assert session_threads(2) == max(1, affinity() // 2)


def one_cpu_cgroup() -> Path:
    """A new cgroup v1 `cpu` folder with a quota of one CPU (root and a writable hierarchy), or skip."""
    mount = Path("/sys/fs/cgroup/cpu")
    if not (mount / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    folder = mount / f"imgclf-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup here: {e}")
    (folder / "cpu.cfs_period_us").write_text("100000")
    (folder / "cpu.cfs_quota_us").write_text("100000")
    return folder


@pytest.mark.skipif(affinity() < 2, reason="a quota of one CPU changes nothing on one core")
def test_a_process_in_a_one_cpu_cgroup_sizes_its_sessions_and_pools_by_the_quota(tmp_path):
    folder = one_cpu_cgroup()
    graph = tiny_graph(tmp_path / "a.onnx", seed=1)
    code = ("import json; from core.cores import *; from service.runtime import Graph; "
            "from service.rows import default_workers; "
            f"print(json.dumps([affinity(), usable_cores(), session_threads(1), session_threads(2), "
            f"Graph({str(graph)!r}, 'cpu').cpu_threads, default_workers()]))")  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              preexec_fn=lambda: (folder / "cgroup.procs").write_text(str(os.getpid())))  # fmt: skip
    finally:
        folder.rmdir()
    assert done.returncode == 0, done.stderr[-2000:]
    cores, usable, alone, shared, graph_threads, decoders = json.loads(done.stdout)
    assert cores == affinity() >= 2  # the same CPUs to run on ...
    assert (usable, alone, shared, graph_threads, decoders) == (1, 1, 1, 1, 1)  # ... a quota of one
