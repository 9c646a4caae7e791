"""A model or config that cannot serve stops `bentoml serve` with one line and exit status 2, never a restart loop;
and a client's value quoted in an error is cut short.

Real `bentoml serve` subprocesses over a temporary model store of tiny graphs (tests/tiny_onnx.py: torch-free,
so a server starts in seconds), each good, broken or stored in some way a worker could not serve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core import metadata
from core.devices import gpu_present
from tests.conftest import ROOT
from tests.test_service import BENTOML, free_port, serving
from tests.tiny_onnx import tiny_graph

pytestmark = pytest.mark.slow  # every test starts `bentoml serve`

META = {"labels": [str(i) for i in range(10)], "arch": "tiny", "resize_size": 32, "crop_size": 32,
        "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "source_sha256": "0" * 64, "metrics": {},
        "format_version": "1"}  # fmt: skip
STORE = """
import json, sys
from pathlib import Path
import bentoml
for name, graph, meta in json.loads(sys.argv[1]):
    with bentoml.models.create(name, metadata=meta) as model:
        if graph:
            Path(model.path_of("model.onnx")).write_bytes(Path(graph).read_bytes())
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict:
    """A model store with a good tiny graph and one entry for each way a graph can fail to serve."""
    folder = tmp_path_factory.mktemp("start-up")
    env = {**os.environ, "BENTOML_HOME": str(folder / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    (folder / "corrupt.onnx").write_bytes(b"\x08\x07 definitely not a protobuf graph")
    good = tiny_graph(folder / "good.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(good[: len(good) // 2])
    entries = [
        ("good", tiny_graph(folder / "good.onnx"), META),
        ("corrupt", folder / "corrupt.onnx", META),
        ("truncated", folder / "truncated.onnx", META),
        ("bare", tiny_graph(folder / "bare.onnx", leave_out=metadata.REQUIRED), META),
        ("nometa", tiny_graph(folder / "nometa.onnx"), {}),
        ("nograph", "", META),
    ]
    entries = [(name, str(graph), meta) for name, graph, meta in entries]
    result = subprocess.run([sys.executable, "-c", STORE, json.dumps(entries)], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {**env, "SERVING_CONFIG": str(folder / "serving.yaml"), "LOG_PATH": str(folder / "serve.log")}


def serve(home: dict, config: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`bentoml serve` of `config` to its end; the timeout only stops a server that would otherwise run for ever."""
    Path(home["SERVING_CONFIG"]).write_text(config)
    command = [BENTOML, "serve", "--port", str(free_port()), "--host", "127.0.0.1"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env or home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        stdout, stderr = proc.communicate()
        pytest.fail(f"bentoml serve still running after 120 s (a restart loop?): {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    return lines[0]


# (the broken model, what its line must say besides the tag and the file)
BROKEN = [
    ("corrupt", "ONNX Runtime cannot open", "INVALID_PROTOBUF"),
    ("truncated", "ONNX Runtime cannot open", "Protobuf parsing failed"),
    ("bare", "ONNX metadata lacks labels, arch", "not a graph exported by this project"),
    ("nograph", "its graph", "is missing from the model store"),
]


@pytest.mark.parametrize(("name", "why", "detail"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_model_that_cannot_serve_stops_the_server_in_one_line(home, name, why, detail):
    line = one_line(serve(home, f"device: cpu\nmodels: [good, {name}]\n"))
    folder = Path(home["BENTOML_HOME"]) / "models" / name
    assert line.startswith(f"error: model '{name}:") and str(folder) in line and "model.onnx" in line, line
    assert why in line and detail in line and f"--store {name}" in line, line


def test_an_entry_without_metadata_stops_the_server_in_one_line(home):
    line = one_line(serve(home, "device: cpu\nmodels: [good, nometa]\n"))
    assert line.startswith("error: model 'nometa:") and "metadata lacks labels, arch" in line, line


def test_cuda_without_a_gpu_stops_the_server_in_one_line(home):
    if gpu_present():
        pytest.skip("this machine has a GPU")
    line = one_line(serve(home, "device: cuda\nmodels: [good]\n"))
    assert line.startswith("error: device: cuda, but ") and "serve with device: auto or cpu" in line, line


def test_gpu_preprocessing_without_a_gpu_stops_the_server_in_one_line(home):
    if gpu_present():
        pytest.skip("this machine has a GPU")
    line = one_line(serve(home, "preprocessing: gpu\nmodels: [good]\n"))
    assert line.startswith("error: preprocessing: gpu, but this machine has no GPU"), line
    assert "the GPU backend needs a GPU machine" in line, line


def test_a_worker_that_cannot_start_stops_the_server(home, tmp_path):
    """The net under the checks: a worker whose start-up fails anyway (here ONNX Runtime, made to fail in the
    workers only, as when a GPU disappears after the check) stops the server with exit status 2; no restart."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "if '_bentoml_impl.worker.service' in sys.orig_argv:\n"
        "    import onnxruntime\n"
        "    class Gone(onnxruntime.InferenceSession):\n"
        "        def __init__(self, *args, **kwargs):\n"
        "            raise RuntimeError('CUDA failure 100: no CUDA-capable device is detected')\n"
        "    onnxruntime.InferenceSession = Gone\n"
    )
    path = os.pathsep.join(p for p in (str(tmp_path), home.get("PYTHONPATH")) if p)
    result = serve(home, "device: cpu\nmodels: [good]\n", {**home, "PYTHONPATH": path})
    assert result.returncode == 2, result.stderr[-3000:]
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(failed) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "a worker cannot start, so the server stops" in failed[0] and "no CUDA-capable device" in failed[0]


def test_client_values_in_errors_are_cut_short(home):
    """A 900 KB model name, ensemble name or field name is quoted by a short prefix, not echoed whole."""
    config = "device: cpu\nmodels: [good]\nensembles: {default: {members: [good]}}\n"
    Path(home["SERVING_CONFIG"]).write_text(config)
    long = "x" * 900_000
    with serving([], home) as (url, proc):
        assert proc.poll() is None, Path(home["LOG_PATH"]).read_text()[-3000:]
        image = ("images", ("a.png", b"\x89PNG", "image/png"))  # each request is refused before it is decoded
        asked = [
            ("classify", {"data": {"model": long}}, 404, "unknown model 'xxxx"),
            ("ensemble", {"data": {"ensemble": long}}, 404, "unknown ensemble 'xxxx"),
            ("ensemble", {"data": {"voting": long}}, 400, "voting must be soft, weighted or hard, got 'xxxx"),
            ("classify", {"data": {"top_k": long}}, 400, "field 'top_k' must be a whole number, got 'xxxx"),
            ("classify", {"json": {long: 1}}, 400, "unknown field 'xxxx"),
        ]
        for route, body, status, start in asked:
            files = {"files": [image]} if "data" in body else {}
            response = httpx.post(f"{url}/{route}", **body, **files, timeout=60)
            message = response.json()["error"]
            assert response.status_code == status and start in message, (route, response.status_code, message[:300])
            assert len(response.content) < 1000 and "... (900002 characters)" in message, message[:300]
        many = httpx.post(f"{url}/classify", json={f"field{i}": 1 for i in range(1000)}, timeout=60)
        assert many.status_code == 400 and len(many.content) < 1000, many.text[:300]
        assert "unknown fields 'field0', 'field1', 'field2', 'field3', 'field4' and 995 more" in many.json()["error"]
