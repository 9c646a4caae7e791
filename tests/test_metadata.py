"""The graph's metadata contract (core/metadata.py): what a graph must carry, and the format version read on
load. Torch-free: .ci/serving-pythons runs it too."""

from __future__ import annotations

import pytest

from core import metadata

META = {
    "labels": ["0", "1"], "arch": "resnet18", "num_classes": 2, "resize_size": 32, "crop_size": 32,
    "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "source_sha256": "ab",
    "metrics": {"best_val_acc": 1.0}, "format_version": metadata.FORMAT_VERSION, "precision": "fp32",
}  # fmt: skip


def test_metadata_round_trips_through_strings():
    props = metadata.encode(META)
    assert all(isinstance(v, str) for v in props.values())
    assert metadata.decode(props) == {**META, "format_version": metadata.FORMAT_VERSION}


def test_a_graph_without_the_required_keys_is_refused_by_name():
    props = metadata.encode({k: v for k, v in META.items() if k not in ("labels", "std")})
    with pytest.raises(ValueError, match="lacks labels, std"):
        metadata.decode(props)


def test_a_newer_format_version_is_refused_with_what_to_do():
    newer = str(int(metadata.FORMAT_VERSION) + 1)
    expected = f"format_version is {newer}, newer than the {metadata.FORMAT_VERSION}.*export"
    with pytest.raises(ValueError, match=expected):
        metadata.decode(metadata.encode({**META, "format_version": newer}))
    with pytest.raises(ValueError, match="not a whole number"):
        metadata.decode(metadata.encode({**META, "format_version": "one"}))


def test_the_store_keeps_the_required_keys_and_the_optional_ones_present():
    kept = metadata.stored({**META, "voting": "soft", "unrelated": 1})
    assert set(kept) == {*metadata.REQUIRED, "precision", "voting"}
