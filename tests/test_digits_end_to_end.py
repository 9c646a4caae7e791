"""The embedded default recipe, trained through the CLI: accuracy, run folder, evaluate, checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import run_cli, split_probabilities
from training import checkpoint as ckpt
from training.config import DEFAULTS, valid_keys
from training.data import build_splits, eval_loader
from training.engine import evaluate
from training.fit import METRIC_COLUMNS
from training.models import model_from_checkpoint
from training.transforms import eval_transform

pytestmark = pytest.mark.slow  # every test reads the digits recipe trained end to end


def test_recipe_reaches_its_accuracy_and_writes_the_run_folder(trained_digits):
    summary = json.loads((trained_digits / "summary.json").read_text())
    for key in ("model", "dataset", "epochs", "best_val_acc", "test_acc", "num_classes"):
        assert key in summary
    assert summary["model"] == "resnet18" and summary["num_classes"] == 10
    assert summary["test_acc"] >= 0.98, summary  # the recipe's promise in configs/digits_resnet18.yaml

    rows = list(csv.DictReader((trained_digits / "metrics.csv").open()))
    assert list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, summary["epochs"] + 1))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert all(float(r["images_per_s"]) > 0 for r in rows)

    for name in ("curves.png", "best.pt", "last.pt"):
        assert (trained_digits / name).stat().st_size > 0
    assert (trained_digits / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = yaml.safe_load((trained_digits / "config.yaml").read_text())
    flat = valid_keys(resolved)
    assert flat == valid_keys(DEFAULTS)  # every key written, none invented


def test_evaluate_cli_matches_the_summary(trained_digits):
    result = run_cli("evaluate", trained_digits / "best.pt", "--split", "test")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary = json.loads((trained_digits / "summary.json").read_text())
    assert abs(report["acc"] - summary["test_acc"]) < 1e-9
    assert set(report) >= {"acc", "top5", "loss", "n", "per_class"}
    assert report["n"] == 359 and sorted(report["per_class"]) == [str(i) for i in range(10)]
    assert report["top5"] >= report["acc"]
    assert (trained_digits / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"


def test_tta_hflip_averages_the_probabilities_of_each_image_and_its_mirror(trained_digits):
    """The CLI's --tta hflip figures, recomputed here from two plain forward passes: the test images and the
    same images mirrored, their softmax averaged."""
    tta = json.loads(run_cli("evaluate", trained_digits / "best.pt", "--tta", "hflip").stdout)
    assert tta["tta"] == "hflip" and tta["n"] == 359
    plain, labels = split_probabilities(trained_digits / "best.pt")
    mirrored, _ = split_probabilities(trained_digits / "best.pt", mirrored=True)
    mean = (plain + mirrored) / 2
    assert tta["acc"] == pytest.approx(float((mean.argmax(1) == labels).astype(np.float32).mean()), abs=1e-9)
    assert tta["loss"] == pytest.approx(float(-np.log(mean[np.arange(len(labels)), labels]).mean()), rel=1e-4)
    # and it is not the plain run's loss, nor the mirrored run's alone
    for alone in (plain, mirrored):
        assert abs(tta["loss"] - float(-np.log(alone[np.arange(len(labels)), labels]).mean())) > 1e-4


def test_checkpoint_round_trip(trained_digits, tmp_path):
    best = torch.load(trained_digits / "best.pt", map_location="cpu", weights_only=True)
    for key in ("model", "arch", "num_classes", "labels", "preprocess", "config", "metrics", "versions"):
        assert key in best
    assert best["labels"] == [str(i) for i in range(10)]
    assert best["preprocess"] == {
        "resize_size": 32, "crop_size": 32, "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    assert best["metrics"]["test_acc"] >= 0.98

    ckpt.save(best, tmp_path / "copy.pt")
    again = ckpt.load(tmp_path / "copy.pt")
    model_a, model_b = model_from_checkpoint(best), model_from_checkpoint(again)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model_a(x), model_b(x))

    # the rebuilt model reproduces the recorded test accuracy
    splits = build_splits(best["config"]["data"])
    loader = eval_loader(splits.dataset("test", eval_transform(best["preprocess"])), best["config"]["data"], False)
    result = evaluate(model_b, loader, torch.device("cpu"), 10)
    assert abs(result["acc"] - best["metrics"]["test_acc"]) < 1e-9


def test_model_outputs_logits_not_probabilities(trained_digits):
    """Softmax before CrossEntropyLoss silently stops learning; the network must end at the Linear head."""
    best = ckpt.load(trained_digits / "best.pt")
    model = model_from_checkpoint(best)
    test_set = build_splits(best["config"]["data"]).dataset("test", eval_transform(best["preprocess"]))
    images = torch.stack([test_set[i][0] for i in range(16)])
    with torch.no_grad():
        out = model(images)
    assert (out < 0).any(), "probabilities are never negative"
    assert not torch.allclose(out.sum(1), torch.ones(16), atol=1e-3)
    assert (out.max(1).values > 1).all(), "a confident trained model has logits above 1"
    assert isinstance(list(model.modules())[-1], torch.nn.Linear)
