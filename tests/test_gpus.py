"""One worker per GPU (serving.yaml `gpus`, service/gpus.py), tested on the CPU.

The GPU list is the one thing stubbed: a sitecustomize.py in the `bentoml serve` subprocess (and so in its workers,
which inherit PYTHONPATH) makes `core.devices.gpu_ids` answer two fake GPUs; everything else is the real server.
ONNX Runtime here has no CUDA provider, so `device: auto` still runs the sessions on the CPU and each worker
reports, in its start-up line, the GPU it would put them on.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core import devices
from service import gpus
from service.config import ConfigError, loads
from tests.test_service import serving
from tests.test_start_up import META, STORE, one_line, serve
from tests.tiny_onnx import tiny_graph

STARTED = re.compile(r"worker (\d) of (\d): sessions on GPU (\d) \((\w+)\), decoding in (\d+) processes")


def test_gpus_in_the_config_are_checked():
    assert loads("models: [a]\ngpus: all\n", "x").gpus == "all"
    config = loads("models: [a]\ngpus: [0, 2]\nworkers: 4\n", "x")
    assert (config.gpus, gpus.workers(config, [0, 2])) == ([0, 2], 4)
    assert gpus.workers(loads("models: [a]\ngpus: [0, 2]\n", "x"), [0, 2]) == 2  # one per GPU by default
    for text, message in [
        ("gpus: 1", "gpus must be all or a list of distinct GPU ids (whole numbers of at least 0), got 1"),
        ("gpus: [0, 0]", "gpus must be all or a list of distinct GPU ids"),
        ("gpus: [-1]", "gpus must be all or a list of distinct GPU ids"),
        ("device: cpu\ngpus: all", "gpus puts each worker on a GPU, but device is cpu"),
        ("gpus: [0, 1]\nworkers: 1", "workers (1) is fewer than gpus [0, 1]: a GPU would have no worker"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            loads(f"models: [a]\n{text}\n", "x")


def test_each_worker_gets_its_gpu_and_a_share_of_the_cores():
    assert [gpus.of_worker([0, 2], i) for i in (1, 2, 3, 4)] == [0, 2, 0, 2]  # round-robin past one per GPU
    assert gpus.resolve("all", [0, 1, 2]) == [0, 1, 2] and gpus.resolve([2], [0, 1, 2]) == [2]
    with pytest.raises(gpus.GpuError, match=r"no GPU \[3\] \(its GPUs: \[0, 1\]\)"):
        gpus.resolve([1, 3], [0, 1])
    with pytest.raises(gpus.GpuError, match="ONNX Runtime finds no GPU here"):
        gpus.resolve("all", [])
    config = loads("models: [a]\ngpus: all\n", "x")
    assert gpus.decode_processes(config, workers=2, cores=16) == 8
    assert gpus.decode_processes(config, workers=4, cores=2) == 1
    assert gpus.decode_processes(loads("models: [a]\ngpus: all\ndecoding: {processes: 3}\n", "x"), 2, 16) == 3
    assert gpus.decode_processes(loads("models: [a]\n", "x"), 2, 16) == 0  # no gpus: threads, as before


def test_cuda_visible_devices_renumbers_the_gpus(monkeypatch):
    if not devices.gpu_present():
        pytest.skip("no GPU here: gpu_ids is [] whatever CUDA_VISIBLE_DEVICES says")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")
    assert devices.gpu_ids() == [0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict:
    """A model store with one tiny graph, and a sitecustomize.py that lists two fake GPUs."""
    folder = tmp_path_factory.mktemp("gpus")
    env = {**os.environ, "BENTOML_HOME": str(folder / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    entries = [("good", str(tiny_graph(folder / "good.onnx")), META)]
    result = subprocess.run([sys.executable, "-c", STORE, json.dumps(entries)], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stub = folder / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text("import core.devices\ncore.devices.gpu_ids = lambda: [0, 1]\n")
    path = os.pathsep.join(p for p in (str(stub), env.get("PYTHONPATH")) if p)
    return {**env, "SERVING_CONFIG": str(folder / "serving.yaml"), "LOG_PATH": str(folder / "serve.log"),
            "STUBBED": path}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("gpus_key", "started"), [("all", [(1, 0), (2, 1)]), ("[1]", [(1, 1)])])
def test_bentoml_serve_starts_one_worker_per_gpu(home, gpus_key, started):
    """Two fake GPUs: `gpus: all` starts two workers, on GPU 0 and GPU 1, each decoding in its share of the cores
    (here one process each); `gpus: [1]` one worker on GPU 1. The server classifies either way."""
    Path(home["SERVING_CONFIG"]).write_text(f"device: auto\nmodels: [good]\ngpus: {gpus_key}\n")
    env = {**home, "PYTHONPATH": home["STUBBED"]}
    with serving([], env, wait=180) as (url, proc):
        assert proc.poll() is None, Path(home["LOG_PATH"]).read_text()[-3000:]
        png = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(png, "PNG")
        answer = httpx.post(f"{url}/classify", files=[("images", ("a.png", png.getvalue(), "image/png"))], timeout=60)
        assert answer.status_code == 200 and answer.json()[0]["model"] == "good", answer.text
        workers = len(started)
        deadline = time.time() + 120  # /readyz answers once one worker is ready; the others may still be starting
        while len(STARTED.findall(log := Path(home["LOG_PATH"]).read_text())) < workers and time.time() < deadline:
            time.sleep(0.5)
    lines = sorted(STARTED.findall(log))
    cores = len(os.sched_getaffinity(0))
    expected = [(str(i), str(workers), str(gpu), "CPUExecutionProvider", str(max(1, cores // workers)))
                for i, gpu in started]  # fmt: skip
    assert lines == expected, log[-3000:]


@pytest.mark.slow
def test_gpus_on_a_machine_without_them_is_refused_in_one_line(home):
    if devices.gpu_ids():
        pytest.skip("this machine has GPUs")
    line = one_line(serve(home, "device: auto\nmodels: [good]\ngpus: all\n"))
    assert line.startswith("error: serving config: gpus: all, but ONNX Runtime finds no GPU here"), line
    stubbed = {**home, "PYTHONPATH": home["STUBBED"]}
    line = one_line(serve(home, "device: auto\nmodels: [good]\ngpus: [0, 3]\n", stubbed))
    expected = "gpus: [0, 3], but this machine has no GPU [3] (its GPUs: [0, 1]): name those, or use gpus: all"
    assert line == f"error: serving config: {expected}", line
