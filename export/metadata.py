"""The ONNX `metadata_props` contract (DESIGN.md): what a graph carries about itself.

Values are strings in ONNX; lists and dicts are JSON. Reading needs neither torch nor onnx: the
service gets the same map from `onnxruntime.InferenceSession.get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT_VERSION = "1"
MODEL_FILE = "model.onnx"  # the graph's file name inside a BentoML model-store entry
# keys whose values are JSON documents; the rest are plain strings or integers
JSON_KEYS = ("labels", "mean", "std", "metrics", "members", "weights")
INT_KEYS = ("resize_size", "crop_size", "num_classes")
REQUIRED = ("labels", "arch", "resize_size", "crop_size", "interpolation", "mean", "std", "source_sha256",
            "metrics", "format_version")  # fmt: skip


def encode(values: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in values.items()}


def decode(props: dict[str, str]) -> dict[str, Any]:
    """String map -> typed dict; raises ValueError naming the first missing key."""
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise ValueError(f"ONNX metadata lacks {', '.join(missing)}: not a graph exported by this project")
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key in JSON_KEYS:
            out[key] = json.loads(value)
        elif key in INT_KEYS:
            out[key] = int(value)
        else:
            out[key] = value
    return out


def preprocess_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of the metadata `export.preprocess.prepare` needs."""
    return {k: meta[k] for k in ("resize_size", "crop_size", "interpolation")}
