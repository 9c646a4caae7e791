"""Resume, linear probe, repeated runs, DDP and the CIFAR recipes, on small digits budgets."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, quick_config, run_cli
from training import checkpoint as ckpt
from training.config import load_config, save_config
from training.data import build_splits
from training.fit import fit, fit_runs
from training.models import model_from_checkpoint
from training.transforms import eval_transform

pytestmark = pytest.mark.slow  # every test trains


def assert_same(a: object, b: object, where: str) -> None:
    """Two nested state dicts (tensors, numbers, lists) hold the same values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def test_resume_ends_where_an_uninterrupted_run_does(digits_root, tmp_path):
    # EMA, CutMix, random crops and recomputed BatchNorm statistics on: their state and random draws must all
    # survive the restart
    settings = {
        "train.ema_decay": 0.9,
        "train.bn_recompute_batches": 1,
        "augment.cutmix_p": 0.5,
        "schedule.name": "step",
        "schedule.step_size": 1,
        "schedule.gamma": 0.5,
        "data.limit": 96,
        "deterministic": True,
    }
    fit(quick_config(digits_root, **settings, **{"train.epochs": 3}), tmp_path / "straight", show=False)

    config = quick_config(digits_root, **settings, **{"train.epochs": 2})
    fit(config, tmp_path / "resumed", show=False)
    result = run_cli("fit", "--out", tmp_path / "resumed", "--resume", "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed" in result.stdout
    # redirected, the run draws no progress bar (no carriage-return frames) and logs one line an epoch, which
    # the run folder's train.log keeps too, after the first part's lines
    assert "\r" not in result.stdout + result.stderr and "epoch 3/3" in result.stdout
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert log.endswith(result.stdout) and log.startswith("summary: ")

    a, b = ckpt.load(tmp_path / "straight" / "last.pt"), ckpt.load(tmp_path / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    # the optimizer's moments and step counts, the scheduler's position and the AMP scaler's state too: a resume
    # that restarted any of them would go on from a different state even where the weights agree
    for part in ("optimizer", "scheduler", "scaler", "ema_updates", "best"):
        assert_same(a[part], b[part], part)
    assert b["optimizer"]["state"] and b["scheduler"]["last_epoch"] > 0 and b["ema_updates"] > 0
    assert a["history"] == [
        {**row, "seconds": a["history"][i]["seconds"], "images_per_s": a["history"][i]["images_per_s"]}
        for i, row in enumerate(b["history"])
    ]


def test_linear_probe_leaves_the_backbone_unchanged(digits_root, tmp_path):
    fit(quick_config(digits_root), tmp_path / "init", show=False)  # a trained body to probe
    start = ckpt.load(tmp_path / "init" / "last.pt")
    probe = quick_config(
        digits_root, **{"model.transfer": "linear_probe", "model.pretrained": str(tmp_path / "init" / "last.pt")}
    )
    fit(probe, tmp_path / "probe", show=False)
    end = ckpt.load(tmp_path / "probe" / "last.pt")
    changed = [k for k in end["model"] if not torch.equal(end["model"][k], start["model"][k])]
    assert changed and all(k.startswith("fc.") for k in changed), changed  # BN running stats included


def test_runs_report_mean_and_std(digits_root, tmp_path):
    summary = fit_runs(quick_config(digits_root), tmp_path / "multi", runs=2)
    assert summary["runs"] == 2 and len(summary["per_run"]) == 2
    assert {r["seed"] for r in summary["per_run"]} == {0, 1}
    accs = [r["test_acc"] for r in summary["per_run"]]
    assert summary["test_acc"] == pytest.approx(sum(accs) / 2)
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev(accs))  # the sample std of the two runs
    assert (tmp_path / "multi" / "best.pt").exists()
    assert json.loads((tmp_path / "multi" / "summary.json").read_text())["runs"] == 2


def _losses(run) -> list[float]:
    return [float(r["train_loss"]) for r in csv.DictReader((run / "metrics.csv").open())]


def test_two_process_ddp_matches_the_single_process_loss_curve(digits_root, tmp_path):
    """torchrun with 2 gloo processes against 1 process on the same recipe.

    A linear probe keeps BatchNorm in eval mode, so the only differences left are DDP's own: each
    process gets half of every global batch and gradients are averaged. The curves then agree to float
    rounding; a sampler that gave each process the whole set or a gradient sum instead of a mean would not.
    """
    config = quick_config(
        digits_root,
        **{
            "data.limit": 256,
            "train.epochs": 3,
            "augment.crop_padding": 0,
            "augment.rotation": 0,
            "model.transfer": "linear_probe",
            "optim.lr": 0.01,
        },
    )
    save_config(config, tmp_path / "recipe.yaml")
    losses = {}
    for nproc in (1, 2):
        out = tmp_path / f"ddp{nproc}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "training",
            "fit",
            "--config",
            str(tmp_path / "recipe.yaml"),
            "--out",
            str(out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[nproc] = _losses(out)
    assert len(losses[2]) == 3 and losses[2][-1] < losses[2][0]
    assert losses[1] == pytest.approx(losses[2], rel=1e-3), losses


@pytest.mark.parametrize(
    "recipe", ["cifar100_efficientnet_v2_s_reference", "cifar100_efficientnet_v2_s", "cifar100_resnet50"]
)
def test_cifar_recipes_run_a_few_steps(recipe, digits_root, tmp_path):
    """The recipes' model, augmentation and optimizer settings, on 16 digits at 32 px (no CIFAR offline)."""
    overrides = {
        "data.dataset": "digits",
        "data.root": str(digits_root),
        "data.limit": 16,
        "data.batch_size": 8,
        "data.eval_batch_size": 16,
        "data.workers": 0,
        "train.epochs": 1,
        "train.amp": "none",
        "model.pretrained": "none",
        "preprocess.resize_size": 32,
        "preprocess.crop_size": 32,
    }
    config = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)
    summary = fit(config, tmp_path / recipe, show=False)
    assert summary["num_classes"] == 10
    # after two steps the accuracy is near chance, so check what it measures instead: best.pt's top-1 on the
    # 16 test images, counted here by hand
    best = ckpt.load(tmp_path / recipe / "best.pt")
    test = build_splits(config["data"]).dataset("test", eval_transform(best["preprocess"]))
    images, labels = zip(*(test[i] for i in range(len(test))))
    with torch.no_grad():
        predicted = model_from_checkpoint(best)(torch.stack(images)).argmax(1)
    assert len(test) == 16 and best["preprocess"]["crop_size"] == 32
    assert summary["test_acc"] == pytest.approx((predicted == torch.tensor(labels)).float().mean().item(), abs=1e-9)
    assert torch.isfinite(torch.tensor(_losses(tmp_path / recipe))).all()
