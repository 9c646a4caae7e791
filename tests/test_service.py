"""The service for real: `bentoml serve` subprocesses on free ports, a temporary model store, real
PNG and JPEG uploads over HTTP, and `bentoml build` of a Bento that then serves."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage
import torch
from PIL import Image

from core.images import open_rgb
from service.predict import read_rows
from tests.conftest import ROOT, run_cli
from tests.stores import serving_home
from training import checkpoint as ckpt
from training.models import model_from_checkpoint
from training.transforms import eval_transform

pytestmark = pytest.mark.slow  # every test starts `bentoml serve` or builds a Bento, from trained models

BENTOML = str(Path(sys.executable).parent / "bentoml")
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SERVING = """
device: cpu
default_model: digits-resnet18
models: [digits-resnet18, digits-b]
ensembles:
  default: {members: [digits-resnet18, digits-b], voting: soft}
  weighted: {members: [digits-resnet18, digits-b], voting: weighted, weights: [3, 1]}
  hard: {members: [digits-resnet18, digits-b], voting: hard}
batching: {max_batch_size: 64, max_latency_ms: 5000}
limits: {max_images_per_request: 64, max_image_bytes: 2000000, max_image_pixels: 4000000}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], env: dict, cwd: Path = ROOT, wait: float = 150):
    """`bentoml serve ARGS` until /readyz answers 200; yields (base url, process); stops the whole group."""
    port = free_port()
    command = [BENTOML, "serve", *args, "--port", str(port), "--host", "127.0.0.1"]
    with running(command, env, Path(env["LOG_PATH"]), f"http://127.0.0.1:{port}", cwd, wait) as proc:
        yield f"http://127.0.0.1:{port}", proc


@contextmanager
def running(command: list[str], env: dict, log_path: Path, url: str, cwd: Path = ROOT, wait: float = 150):
    """A server `command` (output to log_path) until url/readyz answers 200 or it exits; yields the process and
    stops its whole process group afterwards."""
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + wait
        ready = False
        while not ready and time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            if not ready:
                time.sleep(0.5)
        # a server that exited is the caller's to judge (some tests expect it to); one that runs but never
        # answered 200, or is not even listening, is not a server to test against
        if not ready and proc.poll() is None:
            log.flush()
            pytest.fail(f"{url}/readyz never answered 200 within {wait} s; log:\n{log_path.read_text()[-3000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def store(digits_onnx, second_onnx, tmp_path_factory) -> dict:
    """A temporary BentoML home holding the digits ResNet-18 and a second, weaker digits model."""
    return serving_home(tmp_path_factory.mktemp("bentoml"), SERVING, ("digits-resnet18", digits_onnx),
                        ("digits-b", second_onnx))  # fmt: skip


@pytest.fixture(scope="module")
def server(store):
    with serving([], store) as (url, proc):
        assert proc.poll() is None, Path(store["LOG_PATH"]).read_text()[-4000:]
        yield url


def files(paths_or_bytes, content_type: str = "image/png") -> list:
    out = []
    for i, item in enumerate(paths_or_bytes):
        data = item.read_bytes() if isinstance(item, Path) else item
        out.append(("images", (f"{i}.png", data, content_type)))
    return out


def post(url: str, route: str, images, data: dict | None = None, content_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{url}/{route}", files=files(images, content_type), data=data or {}, timeout=120)


def test_accuracy_over_http_equals_training_evaluate(server, trained_digits, digits_root):
    paths = sorted((digits_root / "test").rglob("*.png"))
    truth = [int(p.parent.name) for p in paths]
    predicted = []
    for i in range(0, len(paths), 64):
        response = post(server, "classify", paths[i : i + 64], {"top_k": "3"})
        assert response.status_code == 200, response.text
        answers = response.json()
        assert len(answers) == len(paths[i : i + 64]) and all(len(a["top_k"]) == 3 for a in answers)
        predicted += [a["index"] for a in answers]
    correct = int(np.sum(np.array(predicted) == np.array(truth)))
    evaluated = json.loads(run_cli("evaluate", trained_digits / "best.pt", "--split", "test").stdout)
    # evaluate reports a float32 mean: compare counts of correct images, not the rounded fractions
    assert evaluated["n"] == len(paths) and correct == round(evaluated["acc"] * len(paths))


def test_probabilities_match_pytorch_on_real_photos_in_many_formats(server, trained_digits):
    """JPEG, RGBA and grayscale PNG, animated GIF, multi-page TIFF, sent with a lying content type."""
    best = ckpt.load(trained_digits / "best.pt")
    model, transform = model_from_checkpoint(best), eval_transform(best["preprocess"])
    photos = ["rocket.jpg", "logo.png", "camera.png", "no_time_for_that_tiny.gif", "multipage.tif", "chelsea.png"]
    for content_type in ("application/octet-stream", "image/jpg"):
        response = post(server, "classify", [SKIMAGE_DATA / p for p in photos], {"top_k": "10"}, content_type)
        assert response.status_code == 200, response.text
        for photo, answer in zip(photos, response.json()):
            with torch.no_grad():
                reference = torch.softmax(model(transform(open_rgb(SKIMAGE_DATA / photo))[None]), 1)[0].numpy()
            served = np.zeros(10)
            for entry in answer["top_k"]:
                served[entry["index"]] = entry["probability"]
            assert np.abs(served - reference).max() <= 1e-4, photo


def _batch_histogram(url: str) -> tuple[float, float, float]:
    """digits-resnet18's inference_batch_images histogram (summed over worker pids): ONNX Runtime calls,
    the images they ran, and the calls that ran more than one image."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    calls = images = single = 0.0
    for name, labels, value in re.findall(r"^inference_batch_images_(count|sum|bucket)\{(.*)\} (\S+)$", text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("model") != "digits-resnet18":
            continue
        if name == "count":
            calls += float(value)
        elif name == "sum":
            images += float(value)
        elif float(pairs["le"]) == 1:
            single += float(value)
    return calls, images, calls - single


def test_concurrent_requests_are_merged_into_batches(server, digits_root):
    """Concurrent one-image requests through a real `bentoml serve` share ONNX Runtime calls, and each
    answer still belongs to its own request.

    A server offers no way to hold its model busy, so whether two requests meet in one call depends on
    when they arrive; the batcher's exact composition rules are proved with a held model in
    tests/test_batcher.py. Here each round sends 48 one-image requests from 16 threads at once, and
    /metrics (the inference_batch_images histogram) says whether any call ran more than one image; the
    test passes at the first round that merged at least one pair, and fails after 5 rounds that did not.
    Why that is robust: a round fails to merge only if each of its 48 requests found the model idle with
    no other request announced (still decoding, which a free model waits for up to max_wait_ms). A
    loaded machine makes each decode and each call longer, so requests overlap more, not less, and each
    round is a fresh chance. A batcher that never merges fails all 5 rounds. No count of calls or
    duration is asserted.

    Each request's answer must equal that image's row in one request carrying all 48 images (one call
    by construction): the images cycle through the ten classes, so a batch whose rows went back to the
    wrong requests gives wrong labels.
    """
    by_class = [sorted((digits_root / "test" / str(d)).glob("*.png")) for d in range(10)]
    paths = [by_class[i % 10][i // 10] for i in range(48)]
    together = post(server, "classify", paths, {"top_k": "1"})
    assert together.status_code == 200, together.text
    expected = [(a["label"], a["probability"]) for a in together.json()]
    merged_in = None
    for round_ in range(1, 6):
        before = _batch_histogram(server)
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda p: post(server, "classify", [p], {"top_k": "1"}), paths))
        after = _batch_histogram(server)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        for response, (label, probability), path in zip(responses, expected, paths):
            [answer] = response.json()
            assert answer["label"] == label and abs(answer["probability"] - probability) <= 1e-4, path
        _, images, merged = (a - b for a, b in zip(after, before))
        assert images == len(paths), f"{len(paths)} images sent, {images} ran"  # each image ran exactly once
        if merged:
            merged_in = round_
            break
    assert merged_in, "5 rounds of 48 concurrent one-image requests: every ONNX Runtime call ran one image"


def test_ensemble_voting(server, digits_root):
    paths = [next((digits_root / "test" / str(d)).glob("*.png")) for d in range(10)]
    members = {}
    for model in ("digits-resnet18", "digits-b"):
        answers = post(server, "classify", paths, {"model": model, "top_k": "10"}).json()
        table = np.zeros((len(paths), 10))
        for n, answer in enumerate(answers):
            for entry in answer["top_k"]:
                table[n, entry["index"]] = entry["probability"]
        members[model] = table
    a, b = members["digits-resnet18"], members["digits-b"]
    for ensemble, expected in (("default", (a + b) / 2), ("weighted", (3 * a + b) / 4)):
        response = post(server, "ensemble", paths, {"ensemble": ensemble})
        assert response.status_code == 200, response.text
        for n, answer in enumerate(response.json()):
            assert answer["index"] == int(expected[n].argmax()) and answer["voting"] in ("soft", "weighted")
            assert answer["probability"] == pytest.approx(expected[n].max(), abs=1e-5)
            assert [m["model"] for m in answer["members"]] == ["digits-resnet18", "digits-b"]
            tops = [int(a[n].argmax()), int(b[n].argmax())]
            assert [m["index"] for m in answer["members"]] == tops
            assert answer["agreement"] == pytest.approx(tops.count(answer["index"]) / 2)
            assert sum(answer["votes"].values()) == 2
    hard = post(server, "ensemble", paths, {"ensemble": "hard"}).json()
    for n, answer in enumerate(hard):
        tops = [int(a[n].argmax()), int(b[n].argmax())]
        if tops[0] == tops[1]:
            assert answer["index"] == tops[0] and answer["agreement"] == 1.0
        else:  # one vote each: the higher mean probability breaks the tie
            assert answer["index"] == max(tops, key=lambda j: a[n, j] + b[n, j]) and answer["agreement"] == 0.5
    # a request may ask for another voting rule than the ensemble's default
    override = post(server, "ensemble", paths[:2], {"ensemble": "default", "voting": "hard"}).json()
    assert all(answer["voting"] == "hard" for answer in override)


def test_models_endpoint(server):
    response = httpx.post(f"{server}/models", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["default_model"] == "digits-resnet18" and set(body["models"]) == {"digits-resnet18", "digits-b"}
    model = body["models"]["digits-resnet18"]
    assert model["tag"].startswith("digits-resnet18:") and model["arch"] == "resnet18"
    assert model["labels"] == [str(i) for i in range(10)] and model["input_size"] == [32, 32]
    assert model["metrics"]["test_acc"] >= 0.98
    assert body["ensembles"]["weighted"] == {"members": ["digits-resnet18", "digits-b"], "voting": "weighted",
                                             "weights": [3.0, 1.0]}  # fmt: skip
    # /docs shows the pydantic response models
    schema = httpx.get(f"{server}/docs.json", timeout=30).json()
    # served from the checkout, the document names the project's version and the service, not BentoML's placeholders
    assert schema["info"]["version"] not in ("None", "") and schema["info"]["description"].startswith("Image class")
    assert {"/classify", "/ensemble", "/models"} <= set(schema["paths"])
    fields = json.dumps(schema["components"]["schemas"])
    for name in ("Classification", "EnsembleClassification", "agreement", "top_k", "members"):
        assert name in fields


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, digits_root):
    good = next((digits_root / "test" / "7").glob("*.png"))
    png = good.read_bytes()
    noise = _png(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8))  # ~3 MB
    bomb = _png(np.zeros((2500, 2500), dtype=np.uint8))  # a few KB, 6.25 M pixels
    cases = [
        ("classify", [b"this is not an image"], {}, 415, "image 0 is not an image in a supported format"),
        ("classify", [png, png[: len(png) // 2]], {}, 400, "image 1 is truncated or corrupt"),
        ("classify", [b""], {}, 400, "image 0 is empty"),
        ("classify", [b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n"], {}, 415, "image 0 is not an image"),
        ("classify", [png] * 65, {}, 413, "65 images; the limit is 64"),
        ("classify", [noise], {}, 413, "image 0 is"),
        ("classify", [png, bomb], {}, 413, "image 1 is 2500x2500 = 6250000 pixels; the limit is 4000000"),
        ("classify", [png], {"model": "nope"}, 404, "unknown model 'nope'; served models: digits-resnet18, digits-b"),
        ("ensemble", [png], {"ensemble": "nope"}, 404, "unknown ensemble 'nope'"),
        ("ensemble", [png], {"voting": "majority"}, 400, "voting must be soft, weighted or hard"),
        ("classify", [png], {"top_k": "0"}, 400, "top_k must be at least 1"),
        ("classify", [png], {"top_k": "many"}, 400, "top_k"),
    ]
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    cases.append(("classify", [ico.getvalue()], {}, 415, "image 0 is ICO, not a supported format"))
    for route, images, data, status, message in cases:
        response = post(server, route, images, data)
        assert response.status_code == status, (message, response.status_code, response.text)
        assert message in json.dumps(response.json()), (message, response.text)
        ok = post(server, "classify", [good])
        assert ok.status_code == 200 and ok.json()[0]["label"] == "7"
    missing = httpx.post(f"{server}/classify", data={"top_k": "3"}, timeout=30)
    assert missing.status_code == 400 and "images" in missing.text


def test_start_up_errors_are_clear(store, tmp_path):
    """A config naming a model the store lacks, or a bad config: `bentoml serve` exits and says why."""
    for yaml_text, message in [
        (
            SERVING.replace("models: [digits-resnet18, digits-b]", "models: [digits-resnet18, digits-b, not-exported]"),
            "Model not-exported could not be found locally",
        ),
        (SERVING.replace("device: cpu", "device: tpu"), "error: serving config: device must be auto, cpu or cuda"),
    ]:
        (tmp_path / "s.yaml").write_text(yaml_text)
        env = {**store, "SERVING_CONFIG": str(tmp_path / "s.yaml"), "LOG_PATH": str(tmp_path / "log")}
        with serving([], env, wait=120) as (url, proc):
            proc.wait(120)
            assert proc.returncode != 0
        assert message in (tmp_path / "log").read_text()


def test_a_server_that_never_answers_readyz_fails_the_test_instead_of_being_tested(tmp_path):
    """`running` waits for /readyz 200; a process that is alive but not listening is not taken for a server."""
    never = [sys.executable, "-c", "import threading; threading.Event().wait()"]  # alive, never listens
    url = f"http://127.0.0.1:{free_port()}"
    with (
        pytest.raises(pytest.fail.Exception, match="/readyz never answered 200 within 1 s"),
        running(never, dict(os.environ), tmp_path / "log", url, wait=1),
    ):
        pass


def test_a_corrupt_model_stops_the_server(store, tmp_path):
    """A graph ONNX Runtime cannot load, served beside good ones, stops `bentoml serve` before any worker starts:
    one line naming it and why, exit status 2 (a worker that failed instead was restarted for ever)."""
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not a protobuf graph")
    meta = {"labels": [str(i) for i in range(10)], "arch": "resnet18", "resize_size": 32, "crop_size": 32,
            "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "source_sha256": "0" * 64,
            "metrics": {}, "format_version": "1"}  # fmt: skip
    code = f"from export.store import store_model; store_model({str(corrupt)!r}, 'broken', {meta!r})"
    stored = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=store, capture_output=True, text=True)
    assert stored.returncode == 0, stored.stderr[-2000:]
    (tmp_path / "s.yaml").write_text(
        SERVING.replace("models: [digits-resnet18, digits-b]", "models: [digits-resnet18, digits-b, broken]")
    )
    env = {**store, "SERVING_CONFIG": str(tmp_path / "s.yaml")}
    serve = [BENTOML, "serve", "--port", str(free_port()), "--host", "127.0.0.1"]
    result = subprocess.run(serve, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: model 'broken:") and "model.onnx: [ONNXRuntimeError]" in line, line
    assert "INVALID_PROTOBUF" in line and "Traceback" not in result.stdout, line


def test_bentoml_build_makes_a_bento_that_serves(store, digits_root, tmp_path):
    """The repository's own serving.yaml (digits-resnet18) is packed with its model and served from the Bento."""
    env = {k: v for k, v in store.items() if k != "SERVING_CONFIG"}
    build = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = json.loads(subprocess.run([BENTOML, "get", tag, "-o", "json"], env=env, capture_output=True, text=True,
                                      timeout=120).stdout)  # fmt: skip
    packed = [m["tag"] for service in bento["services"] for m in service["models"]]
    assert len(packed) == 1 and packed[0].startswith("digits-resnet18:")
    env["LOG_PATH"] = str(tmp_path / "bento.log")
    with serving([tag], env, cwd=tmp_path) as (url, proc):
        assert proc.poll() is None, (tmp_path / "bento.log").read_text()[-3000:]
        good = next((digits_root / "test" / "4").glob("*.png"))
        response = post(url, "classify", [good])
        assert response.status_code == 200 and response.json()[0]["label"] == "4"


def _series(text: str, metric: str, model: str) -> dict[str, float]:
    """One model's samples of a metric from /metrics, by their other labels (summed over worker pids)."""
    out: dict[str, float] = {}
    for labels, value in re.findall(rf"^{metric}\{{(.*)\}} (\S+)$", text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.pop("model", None) == model:
            pairs.pop("pid", None)
            key = ",".join(f"{k}={v}" for k, v in sorted(pairs.items()))
            out[key] = out.get(key, 0.0) + float(value)
    return out


def test_fixed_batch_sizes_warmed_before_ready_with_decoding_processes(store, digits_root, tmp_path):
    """batching.sizes and decoding.processes as a GPU deployment sets them, on the CPU: every (model, size)
    ran before /readyz, every call ran at a fixed size, padding never changes an answer, and a refusal made
    in a decoding process still reaches the client as its 4xx."""
    (tmp_path / "s.yaml").write_text(
        SERVING.replace("max_latency_ms: 5000}", "max_latency_ms: 5000, sizes: [1, 4, 16, 64]}")
        + "decoding: {processes: 2}\nobservability: {access_log: true, tracing: true}\n"
    )
    env = {**store, "SERVING_CONFIG": str(tmp_path / "s.yaml"), "LOG_PATH": str(tmp_path / "log")}
    with serving([], env) as (url, proc):
        assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
        metrics = httpx.get(f"{url}/metrics", timeout=30).text  # the first request after /readyz
        for model in ("digits-resnet18", "digits-b"):
            warmed = _series(metrics, "session_warmup_seconds", model)
            assert sorted(warmed) == [f"batch_size={n}" for n in (1, 16, 4, 64)], warmed
        assert httpx.post(f"{url}/models", timeout=30).json()["models"]["digits-b"]["batch_sizes"] == [1, 4, 16, 64]

        paths = [p for d in range(10) for p in sorted((digits_root / "test" / str(d)).glob("*.png"))[:2]]  # 20
        together = post(url, "classify", paths, {"top_k": "10"})
        assert together.status_code == 200, together.text
        with ThreadPoolExecutor(8) as pool:
            alone = list(pool.map(lambda p: post(url, "classify", [p], {"top_k": "10"}), paths))
        for answer, single in zip(together.json(), alone):
            a = {e["index"]: e["probability"] for e in answer["top_k"]}
            b = {e["index"]: e["probability"] for e in single.json()[0]["top_k"]}
            assert a.keys() == b.keys() and max(abs(a[j] - b[j]) for j in a) <= 1e-5

        bad = post(url, "classify", [paths[0], b"this is not an image"])
        assert bad.status_code == 415 and "image 1 is not an image" in bad.json()["error"]

        text = httpx.get(f"{url}/metrics", timeout=30).text
        run = _series(text, "inference_batch_run_images_bucket", "digits-resnet18")
        # every call ran at 1, 4, 16 or 64 images: nothing lands between those bucket bounds
        assert run["le=2.0"] == run["le=1.0"] and run["le=8.0"] == run["le=4.0"] and run["le=32.0"] == run["le=16.0"]
        real = _series(text, "inference_batch_images_sum", "digits-resnet18")[""]
        padded = _series(text, "inference_batch_run_images_sum", "digits-resnet18")[""]
        assert real == 40 and padded >= 64 + 20  # the request of 20 images ran padded to 64
    # tracing: true gives the classification routes their OpenTelemetry span again: the access lines carry its ids
    lines = [line for line in (tmp_path / "log").read_text().splitlines() if "path=/classify" in line]
    assert lines and all("(trace=" in line for line in lines)


def test_classification_routes_are_not_traced_by_default(server, store, digits_root):
    """observability defaults: an access-log line per request, no span (BentoML's log line names none)."""
    response = post(server, "classify", [next((digits_root / "test" / "5").glob("*.png"))])
    assert response.status_code == 200
    # the access line is written after the answer is sent: poll for it, bounded only so a server that never logs
    # fails the test instead of hanging it (a passing run returns as soon as the line is there)
    deadline = time.time() + 150
    while time.time() < deadline:
        lines = [line for line in Path(store["LOG_PATH"]).read_text().splitlines() if "path=/classify" in line]
        if lines:
            break
        time.sleep(0.2)
    assert lines and not any("(trace=" in line for line in lines)


def test_predict_gives_the_probabilities_classify_and_ensemble_give(server, store, digits_root, tmp_path):
    """`python -m service.predict` on a folder, against the served model and ensemble on the same files: the same
    labels, in the same order, with the same probabilities to 1e-6; a file that is not an image is listed."""
    folder = tmp_path / "images"
    (folder / "photos").mkdir(parents=True)
    for d in range(10):
        for p in sorted((digits_root / "test" / str(d)).glob("*.png"))[:2]:
            shutil.copy(p, folder / f"{d}-{p.name}")
    for photo in ("rocket.jpg", "chelsea.png", "camera.png", "no_time_for_that_tiny.gif", "multipage.tif"):
        shutil.copy(SKIMAGE_DATA / photo, folder / "photos" / photo)
    (folder / "photos" / "broken.png").write_bytes(b"this is not an image")
    for model, route, data in [
        ("digits-resnet18", "classify", {"model": "digits-resnet18"}),
        ("digits-resnet18+digits-b", "ensemble", {"ensemble": "default"}),
    ]:
        out = tmp_path / f"{route}.jsonl"
        result = subprocess.run([sys.executable, "-m", "service.predict", model, str(folder), "--out", str(out),
                                 "--top-k", "10", "--batch-size", "8", "--workers", "2"], cwd=ROOT, env=store,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "25 classified, 1 unreadable" in result.stdout, result.stdout
        rows = read_rows(out)
        [broken] = [r for r in rows if r["error"]]
        assert broken["path"].endswith("broken.png") and "is not an image in a supported format" in broken["error"]
        good = [r for r in rows if not r["error"]]
        response = post(server, route, [Path(r["path"]) for r in good], {**data, "top_k": "10"})
        assert response.status_code == 200, response.text
        for row, answer in zip(good, response.json(), strict=True):
            assert (row["label"], row["index"]) == (answer["label"], answer["index"]), row["path"]
            assert abs(row["probability"] - answer["probability"]) <= 1e-6, row["path"]
            # every class's probability (top_k 10 of 10); not their order, which a 1e-9 difference may swap
            got, want = np.zeros(10), np.zeros(10)
            for table, entries in ((got, row["top_k"]), (want, answer["top_k"])):
                for e in entries:
                    table[e["index"]] = e["probability"]
            assert len(row["top_k"]) == 10 and np.abs(got - want).max() <= 1e-6, row["path"]
