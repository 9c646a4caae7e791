"""The ONNX `metadata_props` contract (docs/contract.md, "The ONNX graph"): what a graph carries about itself.

Values are strings in ONNX; lists and dicts are JSON. Reading needs neither torch nor onnx: the
service gets the same map from `onnxruntime.InferenceSession.get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# what `decode` can read; a graph written by a newer version of this code is refused rather than misread
FORMAT_VERSION = "1"
MODEL_FILE = "model.onnx"  # the graph's file name inside a BentoML model-store entry
# keys whose values are JSON documents; the rest are plain strings or integers
JSON_KEYS = ("labels", "mean", "std", "metrics", "members", "weights")
INT_KEYS = ("resize_size", "crop_size", "num_classes")
REQUIRED = ("labels", "arch", "resize_size", "crop_size", "interpolation", "mean", "std", "source_sha256",
            "metrics", "format_version")  # fmt: skip
# written where they apply: an ensemble's members, weights and voting; a single graph's weights (model or ema),
# precision and dataset
OPTIONAL = ("members", "weights", "voting", "precision", "dataset")


def sha256_of(path: str | Path) -> str:
    """The `source_sha256` of a checkpoint file: what a graph or a store entry says it was exported from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode(values: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in values.items()}


def decode(props: dict[str, str]) -> dict[str, Any]:
    """String map -> typed dict; raises ValueError naming the missing keys, or a format this code cannot read."""
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise ValueError(f"ONNX metadata lacks {', '.join(missing)}: not a graph exported by this project")
    check_format_version(props["format_version"])
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key in JSON_KEYS:
            out[key] = json.loads(value)
        elif key in INT_KEYS:
            out[key] = int(value)
        else:
            out[key] = value
    return out


def check_format_version(version: str) -> None:
    """Refuse a graph whose format is newer than FORMAT_VERSION (or not a version at all)."""
    try:
        newer = int(version) > int(FORMAT_VERSION)
    except ValueError:
        raise ValueError(f"ONNX metadata format_version is '{version}', not a whole number") from None
    if newer:
        raise ValueError(
            f"the graph's metadata format_version is {version}, newer than the {FORMAT_VERSION} this code reads: "
            "export it again with this version, or update this project"
        )


def stored(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a graph's metadata a model-store entry keeps: the required keys and the optional ones
    an ensemble or a float16 graph adds (`bentoml models get` shows them; the service reads them)."""
    return {k: meta[k] for k in (*REQUIRED, *OPTIONAL) if k in meta}


def preprocess_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of the metadata `core.preprocess.prepare` needs."""
    return {k: meta[k] for k in ("resize_size", "crop_size", "interpolation")}


def member_mismatch(a: str, meta_a: dict[str, Any], b: str, meta_b: dict[str, Any]) -> str | None:
    """Why graphs `a` and `b` cannot vote in one ensemble, or None: members must have the same labels in the
    same order (class j of one is class j of the other) and the same eval resize and crop, since an upload is
    decoded once for all of them (resizing an already cropped image is not the preprocessing a member was
    validated with). The one rule for `export ensemble`, serving.yaml's ensembles and `service.predict`."""
    la, lb = meta_a["labels"], meta_b["labels"]
    if la != lb:
        if len(la) != len(lb):
            why = f"{len(la)} classes in '{a}', {len(lb)} in '{b}'"
        elif sorted(la) == sorted(lb):
            j = next(i for i, (x, y) in enumerate(zip(la, lb)) if x != y)
            why = f"the same classes in another order: class {j} is '{la[j]}' in '{a}' but '{lb[j]}' in '{b}'"
        else:
            j = next(i for i, (x, y) in enumerate(zip(la, lb)) if x != y)
            why = f"class {j} is '{la[j]}' in '{a}' but '{lb[j]}' in '{b}'"
        return f"members '{a}' and '{b}' have different labels ({why}); members must share labels, in order"
    pa, pb = preprocess_of(meta_a), preprocess_of(meta_b)
    if pa != pb:
        why = "; ".join(f"{k} {pa[k]} in '{a}' but {pb[k]} in '{b}'" for k in pa if pa[k] != pb[k])
        return (
            f"members '{a}' and '{b}' take different inputs ({why}); members must share resize_size, crop_size "
            "and interpolation: export them at one size, or serve them as separate models"
        )
    return None
