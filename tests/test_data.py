from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from training.config import DEFAULTS
from training.data import build_splits


def data_cfg(**kw) -> dict:
    return {**DEFAULTS["data"], **kw}


def test_digits_folder_is_a_stratified_70_10_20_split(digits_root):
    counts = {s: len(list((digits_root / s).rglob("*.png"))) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 1797
    assert counts == {"train": 1258, "val": 180, "test": 359}
    image = Image.open(next((digits_root / "test" / "3").glob("*.png")))
    assert image.size == (32, 32) and image.mode == "RGB"
    names = {p.name for p in digits_root.rglob("*.png")}
    assert len(names) == 1797  # file names are the indices of the original set: no duplicates across splits
    splits = build_splits(data_cfg(dataset="digits", root=str(digits_root)))
    assert splits.labels == [str(i) for i in range(10)]
    per_class = Counter(splits.parts["test"][2].tolist())
    assert min(per_class.values()) >= 34 and max(per_class.values()) <= 38


def _folder(root, classes: dict[str, int]):
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")


def test_imagefolder_without_val_is_split_by_class(tmp_path):
    _folder(tmp_path, {"cat": 20, "dog": 10, "zebra": 30})
    splits = build_splits(data_cfg(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2))
    assert splits.labels == ["cat", "dog", "zebra"]  # index order = sorted folder names
    assert Counter(splits.parts["val"][2].tolist()) == {0: 4, 1: 2, 2: 6}
    assert len(splits.parts["train"][1]) == 48 and "test" not in splits.parts
    assert not set(splits.parts["train"][1]) & set(splits.parts["val"][1])
    image, label = splits.dataset("val", None)[0]
    assert image.mode == "RGB" and label == 0


def test_limit_keeps_a_subset_of_every_split(digits_root):
    splits = build_splits(data_cfg(dataset="digits", root=str(digits_root), limit=50))
    assert {s: len(p[1]) for s, p in splits.parts.items()} == {"train": 50, "val": 50, "test": 50}


def test_missing_folder_and_single_class_are_clear(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        build_splits(data_cfg(dataset="imagefolder", root=str(tmp_path / "nope")))
    _folder(tmp_path / "one", {"only": 5})
    with pytest.raises(UserError, match="has 1 class \\(only\\); a classifier needs at least two"):
        build_splits(data_cfg(dataset="imagefolder", root=str(tmp_path / "one")))


def test_undecodable_image_stops_or_is_skipped(tmp_path):
    _folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "b" / "0.jpg").write_bytes(b"not an image at all")
    strict = build_splits(data_cfg(dataset="imagefolder", root=str(tmp_path), val_fraction=0.25))
    bad = [
        i
        for i, (path, _) in enumerate(strict.parts["train"][0].samples)
        if path.name == "0.jpg" and path.parent.name == "b"
    ][0]
    with pytest.raises(UserError, match="cannot decode image .*b/0.jpg.*data.on_bad_image=skip"):
        strict.parts["train"][0][bad]
    lenient = build_splits(data_cfg(dataset="imagefolder", root=str(tmp_path), val_fraction=0.25, on_bad_image="skip"))
    image, label = lenient.parts["train"][0][bad]
    assert image.size == (10, 12)  # the next decodable image stands in


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="cifar100 not found under .*data.download=true.*cifar-100-python"):
        build_splits(data_cfg(dataset="cifar100", root=str(tmp_path)))
