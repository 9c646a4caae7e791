"""The parts of `python -m service.predict ... --ray` that need no Ray cluster, fast: which paths a rerun still
classifies (real Parquet files in a temporary folder), and the one-line refusal of a cluster that cannot be joined
(the command in a subprocess: Ray never runs in the suite's process, tests/test_bulk.py says why). The jobs
themselves run on a real two-node cluster in tests/test_bulk.py (slow).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.tiny_onnx import tiny_graph

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
RAY_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+INFO ")  # "Connecting to existing Ray cluster ..."
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the bulk extra is not installed")


def test_a_rerun_classifies_only_the_paths_no_whole_part_holds(tmp_path, monkeypatch):
    from service.bulk import still_to_do

    monkeypatch.chdir(tmp_path)  # the paths come relative, as from a user's shell; the parts hold absolute ones
    paths = [Path("images", f"{i}.png") for i in range(6)]
    out = tmp_path / "parts"
    out.mkdir()
    assert still_to_do(paths, out) == [str(tmp_path / p) for p in paths]  # nothing written yet

    def part(name: str, done: list[int]) -> None:
        rows = {"path": [str(tmp_path / paths[i]) for i in done], "label": ["0"] * len(done)}
        pq.write_table(pa.table(rows), out / name)

    part("part-a.parquet", [0, 3])
    part("part-b.parquet", [4])
    part(".part-c.tmp", [1, 2])  # a part a killed writer left half-done: its rows are not written
    assert still_to_do(paths, out) == [str(tmp_path / paths[i]) for i in (1, 2, 5)]
    assert sorted(p.name for p in out.iterdir()) == ["part-a.parquet", "part-b.parquet"]  # the leftover is gone


def cli(graph: Path, image: Path, out: Path, address: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    return subprocess.run([sys.executable, "-m", "service.predict", str(graph), str(image), "--out", str(out),
                           "--ray", address], cwd=ROOT, env={**environ, **env}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture
def job(tmp_path) -> tuple[Path, Path, Path]:
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    return tiny_graph(tmp_path / "a.onnx"), tmp_path / "red.png", tmp_path / "parts"


@needs_ray
def test_an_address_where_nothing_listens_is_one_line_and_exit_2(job):
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    refused = cli(*job, address)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.splitlines() == [
        f"error: cannot join the Ray cluster at {address}: nothing answers at {address} (Connection refused)"
    ]


@needs_ray
def test_a_missing_token_is_one_line_and_exit_2(job, tmp_path):
    """A cluster that asks for a token (RAY_AUTH_MODE=token) with none on this machine: Ray refuses before it
    connects, so a socket that only listens stands for the cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        refused = cli(*job, address, RAY_AUTH_MODE="token", HOME=str(tmp_path))  # no ~/.ray/auth_token
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    [line] = [line for line in refused.stderr.splitlines() if not RAY_LOG.match(line)]
    assert line.startswith(f"error: cannot join the Ray cluster at {address}: ") and "token" in line, line


@needs_ray
def test_a_finished_job_run_again_answers_at_once_without_joining_ray(job):
    """Every path already in a part: the rerun writes nothing and never joins Ray, so even an address where nothing
    listens is not contacted (had the run not filtered its paths, it would have tried it and stopped there)."""
    graph, image, out = job
    out.mkdir()
    pq.write_table(pa.table({"path": [str(image.absolute())], "label": ["0"]}), out / "part-a.parquet")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    rerun = cli(graph, image, out, address)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "0 classified, 0 unreadable" in rerun.stdout and "1 already written; Ray start-up 0.0 s" in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == ["part-a.parquet"]
