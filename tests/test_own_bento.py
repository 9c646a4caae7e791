"""A Bento of any serving config, and the start-up checks: `bentoml build` / `make bento` with SERVING_CONFIG pack
that file and exactly its models, and `bentoml serve TAG` serves them; a model missing from the store, ensemble
members that differ in labels or input size, and a port in use each stop `bentoml serve` (and `bentoml build`)
with one line and exit status 2. The unit tests at the top need no server or model."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from export.__main__ import default_out
from service import packed, port, stored
from service.config import parse
from tests.conftest import ROOT
from tests.stores import model_home, store_graphs

BENTOML = str(Path(sys.executable).parent / "bentoml")
META = {"labels": [str(i) for i in range(10)], "crop_size": 32, "resize_size": 32, "interpolation": "bilinear"}


def test_ensemble_members_must_share_labels_in_order_and_input_size():
    config = parse({"models": ["a", "b"], "ensembles": {"pair": {"members": ["a", "b"]}}})
    stored.check_ensembles(config, {"a": META, "b": dict(META)})
    for change, words in [
        ({"labels": META["labels"][::-1]}, "different labels (the same classes in another order: class 0 is '0'"),
        ({"labels": [*META["labels"][:9], "ten"]}, "different labels (class 9 is '9' in 'a' but 'ten' in 'b')"),
        ({"crop_size": 28}, "different inputs (crop_size 32 in 'a' but 28 in 'b')"),
        ({"resize_size": 36}, "different inputs (resize_size 32 in 'a' but 36 in 'b')"),
        ({"interpolation": "bicubic"}, "different inputs (interpolation bilinear in 'a' but bicubic in 'b')"),
    ]:
        with pytest.raises(stored.StartUpError) as e:
            stored.check_ensembles(config, {"a": META, "b": {**META, **change}})
        message = str(e.value)
        assert message.startswith("ensembles.pair: members 'a' and 'b' ") and words in message, message
        assert "\n" not in message


def test_the_serve_and_build_processes_are_told_apart_from_workers_and_imports():
    assert port.bentoml_command(["/v/bin/bentoml", "serve", "--port", "3001"]) == ("serve", ["--port", "3001"])
    assert port.bentoml_command(["/v/lib/python3.11/site-packages/bentoml/__main__.py", "build"]) == ("build", [])
    assert port.bentoml_command(["/v/bin/python", "-m", "_bentoml_impl.worker.service", "."]) is None
    assert port.bentoml_command(["-c"]) is None and port.bentoml_command(["/v/bin/bentoml", "models"]) is None
    assert port.address(["TAG", "-p", "3005", "--host", "127.0.0.1"]) == ("127.0.0.1", 3005)


def test_a_port_in_use_is_seen_and_a_free_one_is_not():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert port.in_use("127.0.0.1", taken) and port.in_use("0.0.0.0", taken)
        with pytest.raises(SystemExit) as stop:
            port.check(["bentoml", "serve", "--port", str(taken), "--host", "127.0.0.1"])
        assert stop.value.code == 2
    assert not port.in_use("127.0.0.1", taken)
    port.check(["bentoml", "serve", "--port", str(taken), "--host", "127.0.0.1"])  # free again: no exit


def test_a_bento_folder_is_recognised(tmp_path):
    assert not packed.in_bento()  # this checkout
    (tmp_path / "src" / "service").mkdir(parents=True)
    assert not packed.in_bento(tmp_path)
    (tmp_path / "bento.yaml").write_text("service: service.service:Classifier\n")
    assert packed.in_bento(tmp_path)


def test_export_writes_models_name_onnx_without_out():
    assert default_out(None, "digits-a") == str(Path("models") / "digits-a.onnx")
    assert default_out("x.onnx", "digits-a") == "x.onnx"
    with pytest.raises(Exception, match="--out FILE.onnx, or --store NAME"):
        default_out(None, None)


def test_a_bento_of_a_cpu_config_requires_onnxruntime_and_others_onnxruntime_gpu():
    from deploy.bento import bentofile_for

    source = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    [listed] = [p for p in source["python"]["packages"] if p.startswith("onnxruntime")]
    assert listed.startswith("onnxruntime-gpu")
    for device, runtime in [("cpu", listed.replace("onnxruntime-gpu", "onnxruntime")), ("auto", listed),
                            ("cuda", listed)]:  # fmt: skip
        packages = bentofile_for(source, device)["python"]["packages"]
        assert [p for p in packages if p.startswith("onnxruntime")] == [runtime], (device, packages)
        assert [p for p in packages if not p.startswith("onnxruntime")] == [
            p for p in source["python"]["packages"] if not p.startswith("onnxruntime")
        ]
        assert bentofile_for(source, device)["include"] == source["include"]
    # preprocessing: gpu carries its decoder and onnx (its resize graph); the host backend needs neither
    gpu, host = (bentofile_for(source, "cuda", p)["python"]["packages"] for p in ("gpu", "host"))
    assert gpu == [*host, "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "onnx"] and "onnx" not in host


def test_make_passes_serving_config_to_bento_and_container():
    for target in ("bento", "container"):
        dry = subprocess.run(["make", "-n", "-o", "install", target, "SERVING_CONFIG=mine.yaml"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        assert "SERVING_CONFIG=mine.yaml" in dry.stdout, dry.stdout


# --- real model stores, builds and servers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_store(digits_onnx, tmp_path_factory) -> dict:
    """A temporary BentoML home: the trained digits model under two names, and two entries of the same graph
    whose metadata says another input size, or the labels in another order."""
    home = tmp_path_factory.mktemp("bentoml-own")
    env = model_home(home)
    labels = [str(i) for i in range(10)]
    store_graphs(env, ("digits-resnet18", digits_onnx), ("digits-other", digits_onnx),
                 ("digits-crop28", digits_onnx, {"crop_size": 28}),
                 ("digits-reversed", digits_onnx, {"labels": labels[::-1]}))  # fmt: skip
    # what a checkout's serving.yaml would say: the Bentos below must ignore it
    (home / "repo.yaml").write_text("device: cpu\nmodels: [digits-resnet18]\n")
    return env


def _config(env: dict, tmp_path: Path, text: str) -> dict:
    (tmp_path / "s.yaml").write_text(text)
    return {**env, "SERVING_CONFIG": str(tmp_path / "s.yaml"), "LOG_PATH": str(tmp_path / "serve.log")}


def _packed_models(env: dict, tag: str) -> list[str]:
    got = subprocess.run([BENTOML, "get", tag, "-o", "json"], env=env, capture_output=True, text=True, timeout=120)
    return sorted(m["tag"].split(":")[0] for s in json.loads(got.stdout)["services"] for m in s["models"])


def _served(env: dict, tag: str, tmp_path: Path) -> dict:
    """POST /models of `bentoml serve TAG`, served with SERVING_CONFIG naming another model (ignored)."""
    from tests.test_service import serving

    env = {**env, "SERVING_CONFIG": str(Path(env["BENTOML_HOME"]) / "repo.yaml")}
    with serving([tag], env, cwd=tmp_path) as (url, proc):
        assert proc.poll() is None, Path(env["LOG_PATH"]).read_text()[-3000:]
        return httpx.post(f"{url}/models", timeout=60).json()


def _tag(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return next(line for line in result.stdout.splitlines() if line.startswith("__tag__:")).removeprefix("__tag__:")


@pytest.mark.slow
def test_bentoml_build_packs_and_serves_the_config_it_is_given(own_store, tmp_path):
    env = _config(own_store, tmp_path, "device: cpu\nmodels: [digits-other]\n")
    tag = _tag(subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600))  # fmt: skip
    assert _packed_models(env, tag) == ["digits-other"]
    answer = _served(env, tag, tmp_path)
    assert list(answer["models"]) == ["digits-other"] and answer["default_model"] == "digits-other"


@pytest.mark.slow
def test_make_bento_packs_and_serves_the_config_it_is_given(own_store, tmp_path):
    env = _config(own_store, tmp_path, "device: cpu\nmodels: [digits-other, digits-resnet18]\nensembles:\n"
                                       "  pair: {members: [digits-other, digits-resnet18]}\n")  # fmt: skip
    venv = Path(sys.executable).parent.parent
    make = subprocess.run(["make", "-o", "install", "bento", f"VENV={venv}", f"SERVING_CONFIG={env['SERVING_CONFIG']}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert make.returncode == 0, (make.stdout + make.stderr)[-3000:]
    # it ends with this project's next steps, not BentoML's (containerize, BentoCloud)
    tag = make.stdout.split("== Bento ")[-1].split()[0]
    assert tag.startswith("classifier:") and "BentoCloud" not in make.stdout, make.stdout[-2000:]
    assert f"bentoml serve {tag} --port 3000" in make.stdout
    assert f"make container SERVING_CONFIG={env['SERVING_CONFIG']}" in make.stdout
    assert _packed_models(env, tag) == ["digits-other", "digits-resnet18"]
    # device: cpu carries plain onnxruntime, not onnxruntime-gpu and its CUDA libraries
    home = Path(env["BENTOML_HOME"]) / "bentos" / "classifier" / tag.split(":")[1]
    requirements = (home / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^onnxruntime==", requirements, re.MULTILINE) and "onnxruntime-gpu" not in requirements
    answer = _served(env, tag, tmp_path)
    assert sorted(answer["models"]) == ["digits-other", "digits-resnet18"]
    assert answer["ensembles"]["pair"]["members"] == ["digits-other", "digits-resnet18"]


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("other", "difference"), [("digits-crop28", "different inputs (crop_size 32 in"),
                                                   ("digits-reversed", "classes in another order")])  # fmt: skip
def test_serve_refuses_an_ensemble_of_members_that_differ(own_store, tmp_path, other, difference):
    env = _config(own_store, tmp_path, f"device: cpu\nmodels: [digits-other, {other}]\n"
                                       f"ensembles:\n  default: {{members: [digits-other, {other}]}}\n")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    serve = subprocess.run([BENTOML, "serve", "--port", str(free)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    line = _one_line(serve)
    assert f"members 'digits-other' and '{other}' " in line and difference in line, line


@pytest.mark.slow
def test_a_missing_model_names_the_tag_the_store_and_bentoml_models_list(own_store, tmp_path):
    env = _config(own_store, tmp_path, "device: cpu\nmodels: [digits-other, not-exported]\n")
    for command in (["serve", "--port", "0"], ["build"]):
        line = _one_line(subprocess.run([BENTOML, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                                        timeout=120))  # fmt: skip
        store = str(Path(own_store["BENTOML_HOME"]) / "models")
        assert "not-exported" in line and store in line and "`bentoml models list`" in line, line


@pytest.mark.slow
def test_serve_on_a_busy_port_is_one_line(own_store, tmp_path):
    env = _config(own_store, tmp_path, "device: cpu\nmodels: [digits-other]\n")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        line = _one_line(subprocess.run([BENTOML, "serve", "--port", str(taken)], cwd=ROOT, env=env,
                                        capture_output=True, text=True, timeout=120))  # fmt: skip
    assert line == (f"error: port {taken} is in use on 0.0.0.0 (another server?); stop it, or serve on another "
                    f"port: bentoml serve --port {taken + 1}")  # fmt: skip
