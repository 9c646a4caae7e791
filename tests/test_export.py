"""Export: real ONNX graphs from real checkpoints, run by ONNX Runtime and compared with PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage
import torch

from core import metadata
from core.images import open_rgb
from core.preprocess import prepare
from export import verify
from export.__main__ import main as export_main
from tests.conftest import export_figures, export_in_process, quick_config, run_export
from training import checkpoint as ckpt
from training.fit import fit
from training.models import model_from_checkpoint
from training.transforms import eval_geometry, eval_transform

pytestmark = pytest.mark.slow  # every test exports (and its fixtures train) a model

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# real photos of several sizes, aspect ratios, formats and modes (RGB, L, RGBA, P animation, multi-page TIFF)
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg",
          "camera.png", "logo.png", "horse.png", "page.png", "motorcycle_left.png", "no_time_for_that_tiny.gif",
          "multipage.tif"]  # fmt: skip


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def effnet_checkpoint(digits_root, tmp_path_factory) -> Path:
    """EfficientNetV2-S briefly trained on digits at a non-trivial geometry: resize 72, crop 64, bicubic."""
    out = tmp_path_factory.mktemp("effnet")
    config = quick_config(
        digits_root,
        **{
            "model.arch": "efficientnet_v2_s",
            "data.limit": 32,
            "data.batch_size": 16,
            "preprocess.resize_size": 72,
            "preprocess.crop_size": 64,
            "preprocess.interpolation": "bicubic",
            "train.ema_decay": 0.9,
        },
    )
    fit(config, out, show=False)
    return out / "best.pt"


@pytest.fixture(scope="module")
def effnet_export(effnet_checkpoint) -> tuple[Path, subprocess.CompletedProcess]:
    out = effnet_checkpoint.parent / "effnet.onnx"
    return out, export_in_process(effnet_checkpoint, "--out", out, "--verify-images", 64)


def test_resnet_graph_contract_and_metadata(digits_onnx, trained_digits):
    sess = session(digits_onnx)
    (inp,), outs = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [32, 32, 3])
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert [(o.name, o.type) for o in outs] == [("probabilities", "tensor(float)")]

    meta = metadata.decode(sess.get_modelmeta().custom_metadata_map)  # readable without torch or onnx
    best = ckpt.load(trained_digits / "best.pt")
    assert meta["labels"] == best["labels"] and meta["arch"] == "resnet18"
    assert {k: meta[k] for k in ("resize_size", "crop_size", "interpolation", "mean", "std")} == best["preprocess"]
    assert meta["metrics"]["test_acc"] == best["metrics"]["test_acc"]
    assert meta["format_version"] == "1" and len(meta["source_sha256"]) == 64

    assert meta["source_sha256"] == metadata.sha256_of(trained_digits / "best.pt")
    onnx.checker.check_model(str(digits_onnx), full_check=True)


def test_dynamic_batch_gives_the_same_answer_per_image(digits_onnx):
    sess = session(digits_onnx)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    full = sess.run(["probabilities"], {"images": pixels})[0]
    assert full.shape == (64, 10) and np.allclose(full.sum(1), 1, atol=1e-5)
    for n in (1, 7):
        part = sess.run(["probabilities"], {"images": pixels[:n]})[0]
        assert np.abs(part - full[:n]).max() < 1e-5


@pytest.mark.parametrize("photo", PHOTOS)
def test_service_preprocessing_equals_training_eval_on_real_photos(
    photo, trained_digits, effnet_checkpoint, digits_onnx, effnet_export
):
    """(a) training's eval transform + PyTorch and (b) core.preprocess + the ONNX graph agree to 1e-4."""
    image = open_rgb(SKIMAGE_DATA / photo)
    for checkpoint_path, graph in ((trained_digits / "best.pt", digits_onnx), (effnet_checkpoint, effnet_export[0])):
        best = ckpt.load(checkpoint_path)
        pixels = prepare(image, best["preprocess"])
        assert np.array_equal(pixels, np.asarray(eval_geometry(best["preprocess"])(image)))
        with torch.no_grad():
            reference = torch.softmax(model_from_checkpoint(best)(eval_transform(best["preprocess"])(image)[None]), 1)
        probabilities = session(graph).run(["probabilities"], {"images": pixels[None]})[0]
        assert np.abs(probabilities - reference.numpy()).max() <= 1e-4, (photo, checkpoint_path.name)


def test_efficientnet_export_verifies_with_ema_weights(effnet_export):
    out, result = effnet_export
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(ema weights)" in result.stdout  # the run selected its EMA weights
    f = export_figures(result)
    assert f["passed"] and f["max_abs_diff"] <= 1e-4 and f["n"] == 64
    meta = metadata.decode(session(out).get_modelmeta().custom_metadata_map)
    geometry = (meta["crop_size"], meta["resize_size"], meta["interpolation"], meta["weights"])
    assert geometry == (64, 72, "bicubic", "ema")


def test_fp16_export_keeps_uint8_in_and_float32_out(trained_digits, tmp_path):
    out = tmp_path / "digits_fp16.onnx"
    result = export_in_process(trained_digits / "best.pt", "--out", out, "--fp16")
    assert result.returncode == 0, result.stderr[-3000:]
    f = export_figures(result)
    assert f["precision"] == "fp16" and f["top1_agreement"] >= 0.995 and f["max_abs_diff"] < 0.05
    sess = session(out)
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_outputs()[0].type == "tensor(float)"
    weights = [i for i in onnx.load(str(out)).graph.initializer if i.dims and np.prod(i.dims) > 1000]
    assert all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert out.stat().st_size < 0.6 * (trained_digits / "best.pt").stat().st_size  # about half the fp32 weights


def test_ensemble_graph_equals_averaging_the_members(digits_onnx, second_onnx, tmp_path):
    out = tmp_path / "ens.onnx"
    result = export_in_process("ensemble", digits_onnx, second_onnx, "--out", out, "--weights", 3, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    sess = session(out)
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "member_probabilities"]
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs, members = sess.run(None, {"images": pixels})
    a = session(digits_onnx).run(None, {"images": pixels})[0]
    b = session(second_onnx).run(None, {"images": pixels})[0]
    assert members.shape == (2, 5, 10)
    assert np.abs(members[0] - a).max() < 1e-6 and np.abs(members[1] - b).max() < 1e-6
    assert np.abs(probs - (0.75 * a + 0.25 * b)).max() < 1e-6
    meta = metadata.decode(sess.get_modelmeta().custom_metadata_map)
    assert meta["arch"] == "ensemble" and meta["weights"] == [0.75, 0.25] and len(meta["members"]) == 2


def test_ensemble_refuses_members_that_differ(digits_onnx, effnet_export, tmp_path):
    relabelled = onnx.load(str(digits_onnx))
    for prop in relabelled.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(["zero", *map(str, range(1, 10))])
    onnx.save_model(relabelled, str(tmp_path / "relabelled.onnx"))
    result = export_in_process("ensemble", digits_onnx, tmp_path / "relabelled.onnx", "--out", tmp_path / "e.onnx")
    assert result.returncode == 2
    assert "must share labels" in result.stderr and "class 0 is '0'" in result.stderr and "'zero'" in result.stderr

    result = export_in_process("ensemble", digits_onnx, effnet_export[0], "--out", tmp_path / "e.onnx")
    assert result.returncode == 2 and "take different inputs (resize_size 32 in" in result.stderr
    assert not (tmp_path / "e.onnx").exists()


def test_store_import(trained_digits, digits_onnx, second_onnx, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    result = run_export(trained_digits / "best.pt", "--out", tmp_path / "d.onnx", "--store", "digits-resnet18",
                        "--verify-images", 16, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tag = next(ln for ln in result.stdout.splitlines() if ln.startswith("stored: ")).removeprefix("stored: ")
    assert tag.startswith("digits-resnet18:")
    result = run_export("ensemble", digits_onnx, second_onnx, "--out", tmp_path / "e.onnx", "--store", "digits-ens",
                        env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    listing = subprocess.run([Path(sys.executable).parent / "bentoml", "models", "list", "-o", "json"], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    models = {m["tag"].split(":")[0]: m for m in json.loads(listing.stdout)}
    assert set(models) == {"digits-resnet18", "digits-ens"}
    show = subprocess.run([Path(sys.executable).parent / "bentoml", "models", "get", tag, "-o", "json"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    info = json.loads(show.stdout)
    assert info["labels"]["arch"] == "resnet18" and info["labels"]["classes"] == "10"
    assert info["metadata"]["labels"] == [str(i) for i in range(10)] and info["metadata"]["crop_size"] == 32
    stored = Path(tmp_path / "bentoml" / "models" / "digits-resnet18" / tag.split(":")[1] / "model.onnx")
    assert stored.read_bytes() == (tmp_path / "d.onnx").read_bytes()


def test_export_errors(tmp_path, trained_digits, capsys):
    """Run in this process (no torch import per case): exit status 2 and one error line, no traceback."""

    def error_of(*args) -> str:
        assert export_main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err, err
        return err

    assert "checkpoint not found" in error_of(tmp_path / "missing.pt", "--out", tmp_path / "m.onnx")
    (tmp_path / "corrupt.pt").write_bytes((trained_digits / "best.pt").read_bytes()[:5000])
    assert "cannot read checkpoint" in error_of(tmp_path / "corrupt.pt", "--out", tmp_path / "m.onnx")
    torch.save({"model": {}, "arch": "resnet18"}, tmp_path / "partial.pt")
    assert "missing num_classes, labels, preprocess, config" in error_of(tmp_path / "partial.pt", "--out",
                                                                         tmp_path / "m.onnx")  # fmt: skip
    # refused before the export, not after it
    bad_name = error_of(trained_digits / "best.pt", "--out", tmp_path / "x.onnx", "--store", "Bad Name!")
    assert "cannot store model as 'Bad Name!'" in bad_name and not (tmp_path / "x.onnx").exists()
    assert "cannot produce opset 99" in error_of(trained_digits / "best.pt", "--out", tmp_path / "m.onnx",
                                                 "--opset", 99)  # fmt: skip


def test_a_graph_that_fails_verification_is_removed_and_export_exits_1(second_onnx, tmp_path, monkeypatch, capsys):
    """The real export and verification, held to a bound no graph can meet (max abs diff <= -1): the
    figures are printed, the graph is deleted, nothing is stored, and the exit status is 1 (not 2, the
    status of a usage error)."""
    monkeypatch.setattr(verify, "FP32_MAX_ABS", -1.0)
    out = tmp_path / "failed.onnx"
    args = [second_onnx.parent / "best.pt", "--out", out, "--verify-images", 16, "--store", "never-stored"]
    assert export_main([str(a) for a in args]) == 1
    printed = capsys.readouterr()
    f = export_figures(subprocess.CompletedProcess([], 1, printed.out, printed.err))
    assert not f["passed"] and f["n"] == 16 and f["max_abs_diff"] <= 1e-4  # the graph itself was fine
    assert "error: ONNX Runtime disagrees with PyTorch (max abs diff <= -1.0 and identical top-1 not met" in printed.err
    assert f"removed {out}" in printed.err and "stored:" not in printed.out
    assert not out.exists() and list(tmp_path.iterdir()) == []
