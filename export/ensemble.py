"""Fuse exported member graphs into one ensemble graph: one `images` input, every member run on it.

Outputs `probabilities` [N, C] (soft vote: the weighted mean of the members) and
`member_probabilities` [M, N, C], so a serving batch runs all members in one session call and hard
voting can still be done from the per-member answers.

Members must share labels and input geometry (resize, crop, interpolation). Members trained at
different sizes are refused rather than resized in the graph: resizing an already resized crop is not
the preprocessing a member was validated with, so its accuracy would silently change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core import metadata
from core.errors import UserError


def load_member(path: str | Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ensemble member not found: {path}")
    try:
        model = onnx.load(str(path))
        return model, metadata.decode({p.key: p.value for p in model.metadata_props})
    except Exception as e:  # noqa: BLE001 - protobuf errors, missing metadata: the same to the user
        raise UserError(f"cannot use {path} as an ensemble member: {str(e).splitlines()[0]}") from None


def _check_compatible(paths: list[Path], metas: list[dict[str, Any]], models: list[onnx.ModelProto]) -> None:
    for path, meta in zip(paths[1:], metas[1:]):
        if (why := metadata.member_mismatch(paths[0].name, metas[0], path.name, meta)) is not None:
            raise UserError(f"ensemble {why}")
    opsets = {next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) for m in models}
    if len(opsets) > 1:
        raise UserError(f"ensemble members use different ONNX opsets {sorted(opsets)}; re-export them with one --opset")


def _member_weights(weights: list[float] | None, count: int) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count, dtype=np.float32)
    if len(weights) != count:
        raise UserError(f"--weights has {len(weights)} values for {count} members")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise UserError(f"--weights must be non-negative with a positive sum, got {weights}")
    return (w / w.sum()).astype(np.float32)


def fuse(paths: list[str | Path], weights: list[float] | None = None) -> onnx.ModelProto:
    """Member ONNX files -> one ensemble ModelProto with metadata."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserError("an ensemble needs at least two member graphs")
    loaded = [load_member(p) for p in paths]
    models, metas = [m for m, _ in loaded], [meta for _, meta in loaded]
    _check_compatible(paths, metas, models)
    w = _member_weights(weights, len(paths))

    nodes, initializers, value_info = [], [], []
    for i, model in enumerate(models):
        prefixed = onnx.compose.add_prefix(model, f"m{i}_")
        for node in prefixed.graph.node:
            for j, name in enumerate(node.input):
                if name == f"m{i}_images":
                    node.input[j] = "images"
        nodes += prefixed.graph.node
        initializers += prefixed.graph.initializer
        value_info += prefixed.graph.value_info
        nodes.append(helper.make_node("Unsqueeze", [f"m{i}_probabilities", "axis0"], [f"m{i}_stacked"]))
    initializers += [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(w.reshape(-1, 1, 1), "member_weights"),
    ]
    nodes += [
        helper.make_node("Concat", [f"m{i}_stacked" for i in range(len(models))], ["member_probabilities"], axis=0),
        helper.make_node("Mul", ["member_probabilities", "member_weights"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis0"], ["probabilities"], keepdims=0),
    ]
    crop, classes = metas[0]["crop_size"], len(metas[0]["labels"])
    graph = helper.make_graph(
        nodes,
        "ensemble",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", crop, crop, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("member_probabilities", TensorProto.FLOAT, [len(models), "batch", classes]),
        ],
        initializer=initializers,
        value_info=value_info,
    )
    fused = helper.make_model(graph, opset_imports=list(models[0].opset_import), producer_name="imgclf-export")
    fused.ir_version = max(m.ir_version for m in models)
    members = [
        {"file": p.name, "arch": m["arch"], "source_sha256": m["source_sha256"], "precision": m.get("precision"),
         "metrics": m["metrics"]}
        for p, m in zip(paths, metas)
    ]  # fmt: skip
    combined = hashlib.sha256("".join(m["source_sha256"] for m in metas).encode()).hexdigest()
    values = {
        "labels": metas[0]["labels"],
        "arch": "ensemble",
        "num_classes": classes,
        **metadata.preprocess_of(metas[0]),
        "mean": [m["mean"] for m in metas],  # per member: each normalizes inside its own subgraph
        "std": [m["std"] for m in metas],
        "source_sha256": combined,
        "metrics": {f"member{i}": m["metrics"] for i, m in enumerate(metas)},
        "format_version": metadata.FORMAT_VERSION,
        "members": members,
        "weights": [round(float(x), 6) for x in w],
        "voting": "soft",
    }
    for key, value in metadata.encode(values).items():
        fused.metadata_props.add(key=key, value=value)
    return fused
