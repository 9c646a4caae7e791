"""`python -m service.predict ... --ray`: a real two-node Ray cluster on this machine (127.0.0.1 only), real
ONNX Runtime sessions on tiny graphs, real image files; the rows equal the local path's.

The cluster is ray.cluster_utils.Cluster: a head and a second node of one CPU each, sharing one module fixture
(Ray's start-up is several seconds). A job on CPUs runs one actor a CPU, so one on each node; the layout of a
cluster with GPUs (decoding in tasks, ahead of the actors) is run here too, on the CPUs.

This module runs in a pytest process of its own, started by tests/test_bulk_process.py (IMGCLF_BULK_TESTS=1 runs
it directly): after it ran inside the whole suite's process, a later test's `ast.parse` raised `SystemError: AST
constructor recursion depth mismatch` (CPython 3.11.7), with Ray's threads still running in that process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.files import list_images
from service.predict import predict, read_rows
from tests.tiny_onnx import tiny_graph

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    os.environ.get("IMGCLF_BULK_TESTS") != "1", reason="runs in its own process: tests/test_bulk_process.py"
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """120 PNGs of distinct colours and sizes in two folders, a file that is not an image, a truncated PNG."""
    root = tmp_path_factory.mktemp("bulk-images")
    rng = np.random.default_rng(0)
    for i in range(120):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        pixels = np.clip(rng.normal(2 * i, 40, (24 + i % 17, 30 + i % 13, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    (root / "a" / "not-an-image.png").write_text("this is not an image")
    png = (root / "b" / "000.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(png[: len(png) // 2])
    return root


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return tiny_graph(tmp_path_factory.mktemp("bulk-graph") / "a.onnx", seed=3)


@pytest.fixture(scope="module")
def cluster():
    # Ray otherwise swaps 127.0.0.1 for the machine's own address when it resolves a node's (read when ray
    # is first imported, so before importorskip)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)  # this process's connection; service.bulk joins it as it is
    # a job here is a few parts of milliseconds each, which the first actor up would take all of, while the
    # other still starts: wait for the whole pool, so that every actor works (Ray Data's own setting)
    ray.data.DataContext.get_current().wait_for_min_actors_s = 120
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("decode_tasks", [False, True], ids=["actors-decode", "tasks-decode-as-with-gpus"])
def test_two_nodes_classify_as_the_local_path_does(cluster, graph, images, tmp_path, decode_tasks):
    import ray

    from service.bulk import predict_on_ray, read_parts

    local = tmp_path / "local.jsonl"
    predict(str(graph), [images], local, top_k=10, batch_size=8, workers=0, probabilities=True)
    summary = predict_on_ray(str(graph), [images], tmp_path / "parts", cluster.address, top_k=10, batch_size=8,
                             probabilities=True, rows_per_file=16, decode_tasks=decode_tasks)  # fmt: skip
    assert (summary.classified, summary.unreadable, summary.skipped) == (120, 2, 0)
    assert summary.files == len(list((tmp_path / "parts").glob("part-*.parquet"))) >= 122 // 16

    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2
    worked = {key.split()[1] for key in summary.nodes}
    assert worked == node_ids, summary.nodes  # both nodes decoded or classified
    for step in ("decode", "classify"):
        assert sum(n for key, n in summary.nodes.items() if key.startswith(f"{step} ")) == 122
    if not decode_tasks:  # an actor a CPU: one on each node, each decoding what it classifies
        assert {key.split()[1] for key in summary.nodes if key.startswith("classify ")} == node_ids

    expected = sorted(read_rows(local), key=lambda r: r["path"])
    got = read_parts(tmp_path / "parts")
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    assert {r["path"] for r in got} == {str(p) for p in list_images([images])}
    for mine, theirs in zip(got, expected):
        assert set(mine) == set(theirs)
        assert (mine["label"], mine["index"], mine["error"]) == (theirs["label"], theirs["index"], theirs["error"])
        if theirs["error"] is None:
            assert [e["index"] for e in mine["top_k"]] == [e["index"] for e in theirs["top_k"]]
            np.testing.assert_allclose([e["probability"] for e in mine["top_k"]],
                                       [e["probability"] for e in theirs["top_k"]], rtol=0, atol=1e-6)  # fmt: skip
            np.testing.assert_allclose(mine["probabilities"], theirs["probabilities"], rtol=0, atol=1e-6)
            assert abs(mine["probability"] - theirs["probability"]) <= 1e-6
        else:
            assert mine["top_k"] is mine["probabilities"] is None
    assert sum(r["error"] is not None for r in got) == 2


@pytest.mark.slow
@pytest.mark.parametrize("decode_tasks", [False, True], ids=["actors-decode", "tasks-decode-as-with-gpus"])
def test_a_name_that_is_not_utf8_gets_its_row_escaped_and_a_rerun_skips_it(cluster, graph, tmp_path, decode_tasks):
    """`caf\\xe9.png` as the local path writes it (service.files.shown_path), in both layouts; a rerun finds it
    written (it compared the name itself with the row's escaped text, and classified it again each time)."""
    from service.bulk import predict_on_ray, read_parts

    folder = tmp_path / "names"
    folder.mkdir()
    for i, name in enumerate([b"plain.png", b"caf\xe9.png"]):
        Image.fromarray(np.full((20, 24, 3), 90 * i, np.uint8)).save(os.fsdecode(os.fsencode(folder) + b"/" + name))
    predict(str(graph), [folder], tmp_path / "local.jsonl", workers=0)
    expected = sorted(read_rows(tmp_path / "local.jsonl"), key=lambda r: r["path"])
    assert f"{folder}/caf\\xe9.png" in [r["path"] for r in expected]
    out = tmp_path / "parts"
    summary = predict_on_ray(str(graph), [folder], out, cluster.address, decode_tasks=decode_tasks)
    assert (summary.classified, summary.unreadable, summary.skipped) == (2, 0, 0)
    got = read_parts(out)
    assert [(r["path"], r["label"], r["error"]) for r in got] == [(r["path"], r["label"], r["error"]) for r in expected]
    again = predict_on_ray(str(graph), [folder], out, cluster.address, decode_tasks=decode_tasks)
    assert (again.classified, again.skipped, again.files) == (0, 2, 0)
    assert len(read_parts(out)) == 2


def _exited(pid: int) -> bool:
    """The process `pid` has ended (gone, or a zombie its parent has not yet reaped): it writes nothing more."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_for_dead_job(driver_pid: int) -> None:
    """Until Ray has marked the job of the killed driver dead and every process that ran one of its actors (the
    actors write the parts; Ray kills them with their job) has exited: a write of the killed job must not land
    after the rerun read what is written. Detached actors outlive their job (Ray Data starts a few, such as its
    _StatsActor, in the first job that uses it) and write nothing. Fails after 120 s."""
    from ray._private.state import actors, jobs

    deadline = time.monotonic() + 120
    while True:
        matching = [j for j in jobs() if int(j["DriverPid"]) == driver_pid]
        if not matching:  # killed before it joined the cluster: it ran nothing
            return
        [job] = matching
        owned = [a for a in actors().values() if a["JobID"] == job["JobID"] and not a["IsDetached"]]
        writers = [a["Pid"] for a in owned if a["Pid"]]
        if job["IsDead"] and all(_exited(pid) for pid in writers):
            return
        assert time.monotonic() < deadline, f"the killed job: dead {job['IsDead']}, its actors' processes {writers}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_job_resumes_and_every_image_is_written_once(cluster, graph, images, tmp_path):
    from service.bulk import read_parts

    out = tmp_path / "parts"
    args = [sys.executable, "-m", "service.predict", str(graph), str(images), "--out", str(out), "--ray",
            cluster.address, "--batch-size", "1", "--part-rows", "2"]  # fmt: skip
    # as from a user's shell: without the setting that keeps Ray on 127.0.0.1, which the cluster fixture made here
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    assert cluster.address.startswith("127.0.0.1:")
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120  # a job that cannot reach the cluster fails here, not hangs
        while first.poll() is None and not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # half-way: some parts written, most not
    finally:
        output = first.communicate(timeout=60)[0]
    assert first.returncode == -signal.SIGKILL, output[-2000:]
    _wait_for_dead_job(first.pid)
    before = len(read_parts(out))
    assert 2 <= before < 122, output[-2000:]  # killed part-way

    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    done = re.search(r"(\d+) classified, (\d+) unreadable.*; (\d+) already written", second.stdout)
    assert done is not None, second.stdout
    assert int(done[3]) == before and int(done[1]) + int(done[2]) == 122 - before
    paths = [r["path"] for r in read_parts(out)]
    assert sorted(paths) == sorted(str(p) for p in list_images([images]))  # each image exactly once
    assert not list(out.glob(".part-*"))


def test_ray_is_imported_by_the_ray_path_only_and_its_mistakes_are_one_line(graph, images, tmp_path):
    code = "import sys, service.predict, service.models, service.files; print('ray' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert imported.stdout.strip() == "False", imported.stderr
    refused = subprocess.run([sys.executable, "-m", "service.predict", str(graph), str(images), "--out",
                              str(tmp_path / "rows.csv"), "--ray"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: with --ray, --out is a folder of Parquet parts, got {tmp_path / 'rows.csv'}"
    ]


@pytest.mark.slow
def test_teacher_labels_from_a_bulk_run_give_the_students_data_of_labelling_in_process(cluster, digits_root, tmp_path):
    """Noisy Student at scale: the teacher's ONNX export labels the unlabelled images on Ray (or locally into
    a CSV), and pseudo-label's selection on those rows keeps the same files with the same targets as the
    teacher checkpoint labelling them in this process."""
    from export.graph import export_onnx
    from service.bulk import predict_on_ray
    from tests.conftest import quick_config
    from training import checkpoint as ckpt
    from training.fit import fit
    from training.unlabeled import pseudo_label, read_labels

    fit(quick_config(digits_root), tmp_path / "teacher", show=False)
    teacher = tmp_path / "teacher" / "best.pt"
    labels = ckpt.load(teacher)["labels"]
    export_onnx(ckpt.load(teacher), teacher, tmp_path / "teacher.onnx")
    unlabeled = digits_root / "val"
    summary = predict_on_ray(str(tmp_path / "teacher.onnx"), [unlabeled], tmp_path / "parts", cluster.address,
                             probabilities=True, rows_per_file=64)  # fmt: skip
    assert summary.unreadable == 0 and summary.classified > 100
    predict(str(tmp_path / "teacher.onnx"), [unlabeled], tmp_path / "local.csv", workers=0, probabilities=True)

    here = pseudo_label(teacher, unlabeled, tmp_path / "here.csv")
    confidence = np.median(read_labels(tmp_path / "here.csv", labels)[1].max(1))
    for threshold, balance in [(0.0, True), (float(confidence), False), (float(confidence), True)]:
        pseudo_label(teacher, unlabeled, tmp_path / "here.csv", threshold, balance)
        expected_paths, expected = read_labels(tmp_path / "here.csv", labels)
        assert len(expected_paths) >= here["images"] // 3
        for source in [tmp_path / "parts", tmp_path / "local.csv"]:
            pseudo_label(teacher, None, tmp_path / "there.csv", threshold, balance, labels_from=source)
            paths, targets = read_labels(tmp_path / "there.csv", labels)
            assert paths == expected_paths, (source, threshold, balance)
            np.testing.assert_allclose(targets, expected, rtol=0, atol=1e-5)


def test_teacher_labels_need_the_probabilities_of_the_teachers_classes(graph, images, tmp_path):
    from core.errors import UserError
    from training.unlabeled import teacher_labels

    digits = [str(i) for i in range(10)]
    predict(str(graph), [images / "a"], tmp_path / "top.csv", workers=0)
    with pytest.raises(UserError, match="has no probabilities column: rerun python -m service.predict with"):
        teacher_labels(tmp_path / "top.csv", digits)
    predict(str(graph), [images / "a"], tmp_path / "full.csv", workers=0, probabilities=True)
    with pytest.raises(UserError, match="was labelled with other classes than the teacher's"):
        teacher_labels(tmp_path / "full.csv", list("abcdefghij"))
    paths, probs = teacher_labels(tmp_path / "full.csv", digits)
    assert paths == sorted(p for p in list_images([images / "a"]) if p.name != "not-an-image.png")
    assert probs.shape == (60, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_layout_runs_an_actor_a_cpu_and_on_gpus_decodes_in_tasks():
    from service.bulk import Layout, layout

    assert layout(cpus=2, gpus=0) == Layout(actors=2, actor_cpus=1, actor_gpus=0, decode_tasks=False)
    assert layout(cpus=16, gpus=0, actors=4) == Layout(4, 4, 0, False)  # fewer actors: more threads each
    assert layout(cpus=2, gpus=0, actors=4) == Layout(4, 0.5, 0, False)  # more actors than CPUs share them
    assert layout(cpus=64, gpus=4) == Layout(4, 0, 1, True)  # one a GPU; the CPUs decode
    assert layout(cpus=2, gpus=0, decode_tasks=True) == Layout(2, 0, 0, True)
