"""The bundled photos dataset, and what fit refuses before it trains: a data.root one level too high, a val split
missing a class, an --out that already holds a run. The recipe learning the photos is the README's own path
(tests/test_own_photos_end_to_end.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import PHOTOS_QUICK, PHOTOS_RECIPE, run_cli
from training.__main__ import main
from training.config import load_config
from training.data import build_splits
from training.photos import COUNTS, SOURCES, write_photos


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }  # fmt: skip


def test_the_photos_are_deterministic_real_jpegs_of_varying_sizes(photos_root, tmp_path):
    first = _files(photos_root)
    assert first == _files(write_photos(tmp_path / "again"))  # two writes, byte for byte the same
    for split, count in COUNTS.items():
        assert sorted(p.name for p in (photos_root / split).iterdir()) == sorted(SOURCES)
        for name in SOURCES:
            assert len(list((photos_root / split / name).glob("*.jpg"))) == count
    sizes = set()
    for path in photos_root.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert len(sizes) > 100 and min(max(s) for s in sizes) >= 200 and max(max(s) for s in sizes) <= 480
    held_out = {h for name, h in first.items() if not name.startswith("train")}
    assert not held_out & {h for name, h in first.items() if name.startswith("train")}
    # the crops differ in content, not only in JPEG bytes: no test image is a train image re-encoded
    train_means = {tuple(np.asarray(Image.open(p)).mean(axis=(0, 1)).round(1)) for p in photos_root.glob("train/*/*")}
    test_means = {tuple(np.asarray(Image.open(p)).mean(axis=(0, 1)).round(1)) for p in photos_root.glob("test/*/*")}
    assert not train_means & test_means


def test_data_photos_command_writes_it(tmp_path):
    result = run_cli("data", "photos", "--out", tmp_path / "photos")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tmp_path / "photos")
    assert len(list((tmp_path / "photos").rglob("*.jpg"))) == sum(COUNTS.values()) * len(SOURCES)


def _tiny(root: Path, photos_root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    """A small image folder of real photos: split -> its class folders, three JPEGs each."""
    for split, classes in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for path in sorted((photos_root / "train" / name).glob("*.jpg"))[:3]:
                shutil.copy(path, root / split / name / path.name)
    return root


def _fit_args(out: Path, root: Path, *extra: str) -> list[str]:
    sets = [f"data.root={root}", "data.dataset=imagefolder", "data.batch_size=2", "preprocess.resize_size=32",
            "preprocess.crop_size=32", "train.epochs=1"]  # fmt: skip
    return ["fit", "--config", str(PHOTOS_RECIPE), "--out", str(out), *extra, "--set", *PHOTOS_QUICK, *sets]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_data_root_one_level_too_high_is_refused(photos_root, tmp_path, capsys):
    _tiny(tmp_path / "data" / "mine", photos_root, {"train": ("cat", "rocket"), "val": ("cat", "rocket")})
    err = _error(capsys, _fit_args(tmp_path / "run", tmp_path / "data"))
    assert "holds datasets, not classes" in err and f"pass data.root={tmp_path / 'data' / 'mine'}" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written: no config.yaml, no train.log


def test_a_refused_fit_leaves_the_folder_as_it_was(photos_root, tmp_path, capsys):
    """--overwrite deletes the earlier run only once the new one is not refused: a data.root one level too high
    and an unknown arch leave its files, and a refusal in a folder of other files adds none."""
    _tiny(tmp_path / "data" / "mine", photos_root, {"train": ("cat", "rocket"), "val": ("cat", "rocket")})
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"weights")
    (out / "train.log").write_text("from the earlier run\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _error(capsys, _fit_args(out, tmp_path / "data", "--overwrite"))
    err = _error(capsys, [*_fit_args(out, tmp_path / "data" / "mine", "--overwrite"), "model.arch=efficientnet_v2s"])
    assert (
        err == "error: unknown model.arch 'efficientnet_v2s': did you mean efficientnet_v2_s or efficientnet_v2_m"
        " or efficientnet_v2_l?"
    ), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    recipe = tmp_path / "recipe.yaml"  # the same name in a recipe file: the line names the file
    recipe.write_text(PHOTOS_RECIPE.read_text().replace("arch: resnet18", "arch: resnt18"))
    err = _error(capsys, [*_fit_args(out, tmp_path / "data" / "mine", "--overwrite")[:2], str(recipe),
                          *_fit_args(out, tmp_path / "data" / "mine", "--overwrite")[3:]])  # fmt: skip
    assert err.startswith("error: unknown model.arch 'resnt18': did you mean resnet18") and err.endswith(
        f"? (in {recipe})"
    ), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # refused inside fit, once --overwrite had moved the earlier run aside: it is put back, a seed's folder too
    (out / "seed1").mkdir()
    (out / "seed1" / "last.pt").write_bytes(b"seed weights")
    for late in ("model.pretrained=" + str(tmp_path / "missing.pth"), "train.amp=fp16"):
        err = _error(capsys, [*_fit_args(out, tmp_path / "data" / "mine", "--overwrite"), late, "device=cpu"])
        assert "weights file not found" in err or "needs CUDA" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert [p.name for p in out.iterdir() if p.is_dir()] == ["seed1"]
        assert (out / "seed1" / "last.pt").read_bytes() == b"seed weights"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _error(capsys, _fit_args(mine, tmp_path / "data"))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_val_split_missing_a_class_is_refused_unless_allowed(photos_root, tmp_path, capsys):
    root = _tiny(tmp_path / "data", photos_root, {"train": ("cat", "coffee", "rocket"), "val": ("cat", "rocket")})
    err = _error(capsys, _fit_args(tmp_path / "run", root))
    assert f"{root / 'val'}/ has no images of 1 class(es) that train has: coffee" in err
    assert "data.allow_missing_classes=true" in err
    data = load_config(PHOTOS_RECIPE, {"data.root": str(root), "data.dataset": "imagefolder"})["data"]
    data["allow_missing_classes"] = True
    splits = build_splits(data)
    assert splits.labels == ["cat", "coffee", "rocket"] and sorted(set(splits.parts["val"].labels)) == [0, 2]


def test_a_held_out_val_split_has_every_class(photos_root, tmp_path):
    root = _tiny(tmp_path / "data", photos_root, {"train": ("cat", "coffee", "rocket")})  # 3 images a class, no val/
    data = load_config(PHOTOS_RECIPE, {"data.root": str(root), "data.dataset": "imagefolder"})["data"]
    splits = build_splits(data)  # 10% of 3 rounds to none: each class still lends val one image
    assert sorted(splits.parts["val"].labels.tolist()) == [0, 1, 2]
    assert sorted(splits.parts["train"].labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_an_empty_class_folder_is_refused(photos_root, tmp_path, capsys):
    root = _tiny(tmp_path / "data", photos_root, {"train": ("cat", "rocket")})
    (root / "train" / "dog").mkdir()
    assert "train/dog holds no images" in _error(capsys, _fit_args(tmp_path / "run", root))


@pytest.mark.parametrize("command", ["fit", "distill", "self-train", "bag"])
def test_an_out_holding_a_run_is_refused(command, photos_root, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "member0").mkdir(parents=True)
    (out / "member0" / "best.pt").write_bytes(b"weights")  # a bag interrupted after its first member
    (out / "train.log").write_text("from the earlier run\n")
    argv = [command, *_fit_args(out, _tiny(tmp_path / "data", photos_root, {"train": ("cat", "rocket")}))[1:]]
    err = _error(capsys, argv)
    assert f"{out} already holds a run (member0/best.pt)" in err and "--resume" in err and "--overwrite" in err
    assert (out / "member0" / "best.pt").read_bytes() == b"weights"  # untouched
    assert (out / "train.log").read_text() == "from the earlier run\n"


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    err = _error(capsys, ["fit", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert "pass one of them" in err


def test_overwrite_starts_the_run_afresh(photos_root, tmp_path, capsys):
    root = _tiny(tmp_path / "data", photos_root, {"train": ("cat", "rocket"), "val": ("cat", "rocket")})
    out = tmp_path / "run"
    (out / "seed1").mkdir(parents=True)
    (out / "seed1" / "last.pt").write_bytes(b"weights")
    (out / "best.pt").write_bytes(b"weights")
    (out / "train.log").write_text("from the earlier run\n")
    (out / "confusion_test.png").write_bytes(b"picture")  # evaluate's, of the earlier best.pt
    (out / "notes.txt").write_text("mine")  # not a run file: kept
    assert main(_fit_args(out, root, "--overwrite")) == 0
    shown = capsys.readouterr().out
    # the last line says where the files went; the recipe's slower body is set to 1 from scratch, in one line
    assert (
        shown.splitlines()[-1]
        == f"checkpoint: {out / 'best.pt'}  curves: {out / 'curves.png'}  log: {out / 'train.log'}"
    )
    log = (out / "train.log").read_text()
    assert (
        "model.backbone_lr_mult 0.1 slows a pretrained body; with model.pretrained=none the body starts random"
        " and learns at the head's rate: set to 1.0" in log
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["backbone_lr_mult"] == 1.0
    assert "from the earlier run" not in log and log.count("summary: ") == 1
    assert log.startswith("train: 6 images, 2 of 2 classes (cat, rocket), 3-3 images a class\n")
    assert not (out / "seed1").exists() and not (out / "confusion_test.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["num_classes"] == 2
    capsys.readouterr()
    # the run it wrote is now a run: a second plain fit is refused, --resume is not
    assert "already holds a run" in _error(capsys, _fit_args(out, root))
