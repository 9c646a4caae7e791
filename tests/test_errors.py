"""Every user mistake is one clear line on stderr and exit code 2, never a library traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import DIGITS_RECIPE, run_cli, training_in_process
from training.__main__ import main


def error_line(capsys, argv: list[str]) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def fit_args(out, *sets) -> list:
    return [
        "fit",
        "--config",
        str(DIGITS_RECIPE),
        "--out",
        str(out),
        "--set",
        "data.workers=0",
        "train.epochs=1",
        *sets,
    ]


def _folder(root, classes):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / name / f"{i}.png")


def test_unknown_key(capsys, tmp_path):
    err = error_line(capsys, fit_args(tmp_path / "r", "optim.lrr=1"))
    assert err == "error: unknown recipe key 'optim.lrr': did you mean optim.lr?"


def test_missing_data_folder(capsys, tmp_path):
    err = error_line(capsys, fit_args(tmp_path / "r", "data.dataset=imagefolder", f"data.root={tmp_path / 'none'}"))
    assert err == f"error: data folder not found: {tmp_path / 'none'}"


def test_single_class_folder(capsys, tmp_path):
    _folder(tmp_path / "data", ["cats"])
    err = error_line(capsys, fit_args(tmp_path / "r", "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}"))
    assert "has 1 class (cats)" in err


@pytest.mark.slow
def test_undecodable_image_in_a_worker_process(tmp_path):
    """With DataLoader workers the error crosses a process boundary and must still read as one line."""
    _folder(tmp_path / "data", ["a", "b"])
    (tmp_path / "data" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli(
        *fit_args(
            tmp_path / "r",
            "data.dataset=imagefolder",
            f"data.root={tmp_path / 'data'}",
            "data.workers=1",
            "data.val_fraction=0.34",
            "data.batch_size=2",
        )
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot decode image") and "a/1.png" in last and "on_bad_image=skip" in last
    assert "Traceback" not in result.stderr

    result = training_in_process(  # no loader workers: no process boundary to cross, so in this process
        *fit_args(
            tmp_path / "s",
            "data.dataset=imagefolder",
            f"data.root={tmp_path / 'data'}",
            "data.on_bad_image=skip",
            "data.val_fraction=0.34",
            "data.batch_size=2",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping undecodable image" in result.stderr


@pytest.mark.slow
def test_checkpoint_for_another_class_count(capsys, tmp_path, digits_root):
    assert main(fit_args(tmp_path / "r", f"data.root={digits_root}", "data.limit=64", "data.batch_size=32")) == 0
    capsys.readouterr()
    _folder(tmp_path / "three", ["x", "y", "z"])
    err = error_line(capsys, ["evaluate", tmp_path / "r" / "best.pt", "--data", tmp_path / "three", "--split", "val"])
    assert "the checkpoint has 10 classes" in err and "has 3" in err


def test_corrupt_or_foreign_checkpoint(capsys, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert "cannot read checkpoint" in error_line(capsys, ["evaluate", tmp_path / "bad.pt"])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert "not a checkpoint of this project: missing arch" in error_line(capsys, ["evaluate", tmp_path / "foreign.pt"])
    assert "checkpoint not found" in error_line(capsys, ["evaluate", tmp_path / "missing.pt"])
    keys = {"arch": "resnet18", "num_classes": 2, "labels": ["a", "b"], "preprocess": {}, "config": {}, "model": {}}
    torch.save({**keys, "format_version": 2}, tmp_path / "newer.pt")
    err = error_line(capsys, ["evaluate", tmp_path / "newer.pt"])
    assert "checkpoint format_version 2, newer than the 1 this code reads" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(capsys, tmp_path):
    err = error_line(capsys, fit_args(tmp_path / "r", "device=cuda"))
    assert "device=cuda was asked for but CUDA is not available" in err
    assert "train.amp=fp16 needs CUDA" in error_line(capsys, fit_args(tmp_path / "r", "train.amp=fp16"))


def test_resume_without_a_run(capsys, tmp_path):
    assert "recipe file not found" in error_line(capsys, ["fit", "--out", tmp_path / "nothing", "--resume"])
