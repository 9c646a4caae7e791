"""Shared fixtures: the digits and photos image folders, CLI runners and small run configs."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from training.config import load_config
from training.digits import write_digits
from training.photos import write_photos

ROOT = Path(__file__).resolve().parents[1]
DIGITS_RECIPE = ROOT / "configs" / "digits_resnet18.yaml"
PHOTOS_RECIPE = ROOT / "configs" / "photos_resnet18.yaml"
# the photos recipe cut down for tests of fit's checks and output: from scratch (no download here), 64 px, 4 epochs
PHOTOS_QUICK = (
    "model.pretrained=none", "preprocess.resize_size=73", "preprocess.crop_size=64",
    "data.workers=0", "train.epochs=4",
)  # fmt: skip


def run_export(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m export ARGS` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "export", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip


def in_process(main: Callable[[list[str]], int], *args: str | Path) -> subprocess.CompletedProcess:
    """A CLI's `main(ARGS)` (training's or export's) run in this process, with its exit status and what it printed,
    in the shape `run_cli` and `run_export` give: the same command without a new interpreter importing torch (3-4 s a
    call on 2 cores). The tests of the command line itself (the digits recipe, the README's path) keep subprocesses."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def export_in_process(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m export ARGS` through `in_process` (no --store: BentoML reads its home once per process)."""
    from export.__main__ import main

    return in_process(main, *args)


def training_in_process(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m training ARGS` through `in_process`."""
    from training.__main__ import main

    return in_process(main, *args)


def export_figures(result: subprocess.CompletedProcess) -> dict:
    """The verification figures export printed (`verify: {...}`)."""
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("verify: "))
    return json.loads(line.removeprefix("verify: "))


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m training ARGS` in a real subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="session")
def photos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled photos (6 classes, 40/10/10 JPEGs each), written once a session (a few seconds)."""
    return write_photos(tmp_path_factory.mktemp("data") / "photos")


def quick_config(digits_root: Path, **overrides) -> dict:
    """The digits recipe cut down to seconds: a subset, one epoch, no worker processes."""
    base = {
        "data.root": str(digits_root),
        "data.limit": 128,
        "data.batch_size": 32,
        "data.eval_batch_size": 128,
        "data.workers": 0,
        "train.epochs": 1,
    }
    return load_config(DIGITS_RECIPE, {**base, **overrides})


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    """The embedded default recipe trained end to end through the CLI (about 2-3 minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("runs") / "digits-resnet18"
    result = run_cli("fit", "--config", DIGITS_RECIPE, "--out", out, "--set", f"data.root={digits_root}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def digits_onnx(trained_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trained_digits exported once through the CLI, verified against PyTorch on the 180 validation images; the
    server tests store this file rather than export again."""
    out = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    result = run_export(trained_digits / "best.pt", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    f = export_figures(result)
    assert f["passed"] and f["max_abs_diff"] <= 1e-4 and f["top1_agreement"] == 1.0 and f["n"] == 180
    return out


@pytest.fixture(scope="session")
def second_onnx(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, weaker digits ResNet-18 (seed 7, 256 images, 2 epochs), exported: an ensemble's other member."""
    from training.fit import fit

    out = tmp_path_factory.mktemp("second")
    fit(quick_config(digits_root, **{"seed": 7, "data.limit": 256, "train.epochs": 2}), out, show=False)
    result = export_in_process(out / "best.pt", "--out", out / "second.onnx", "--verify-images", 32)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "second.onnx"


def split_probabilities(checkpoint_path: Path, mirrored: bool = False) -> tuple:
    """A checkpoint's softmax on every image of its own test split (its eval transform, images mirrored left to
    right if asked), worked out here with plain forward passes, and the labels: numpy [n, classes] and [n], for
    tests that recompute what a CLI reports."""
    import torch

    from training import checkpoint as ckpt
    from training.data import build_splits
    from training.models import model_from_checkpoint
    from training.transforms import eval_transform

    checkpoint = ckpt.load(checkpoint_path)
    model = model_from_checkpoint(checkpoint).eval()
    data = build_splits({**checkpoint["config"]["data"], "limit": 0}).dataset(
        "test", eval_transform(checkpoint["preprocess"])
    )
    images = torch.stack([data[n][0] for n in range(len(data))])
    labels = np.array([data[n][1] for n in range(len(data))])
    with torch.no_grad():
        probabilities = model(images.flip(-1) if mirrored else images).softmax(1).numpy()
    return probabilities, labels
