"""Tiny classifier graphs with this project's metadata, written without torch or the onnx package.

The serving tests run where only the serving dependencies are installed (.ci/serving-pythons), and neither
torch nor onnx is one of them; ONNX files are protobuf messages, so the few fields a graph needs are encoded
here by hand (field numbers from onnx/onnx.proto). The graph follows docs/contract.md, "The ONNX graph":
uint8 `images` [N, S, S, 3] -> `probabilities` [N, C], here softmax(mean colour of the image @ W + b).
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import numpy as np

FLOAT, UINT8 = 1, 2  # TensorProto.DataType
ATTR_INT, ATTR_INTS = 2, 7  # AttributeProto.AttributeType


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _bytes(field: int, data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.float32)
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, FLOAT) + _bytes(8, name) + _bytes(9, array.tobytes())


def _node(op: str, inputs: list[str], outputs: list[str], **attributes: int | list[int]) -> bytes:
    out = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op)
    for name, value in attributes.items():
        if isinstance(value, list):
            attribute = _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, ATTR_INTS)
        else:
            attribute = _bytes(1, name) + _int(3, value) + _int(20, ATTR_INT)
        out += _bytes(5, attribute)
    return out


def tiny_probabilities(seed: int, colours: t.Any, classes: int = 10) -> np.ndarray:
    """What `tiny_graph(seed=seed)` answers, worked out in numpy from the same draws, not by running the graph:
    softmax(mean colour @ W + b) for each mean colour of `colours` ([..., 3])."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(0, 0.05, (3, classes)), rng.normal(0, 1, classes)
    logits = np.asarray(colours, np.float64) @ weight + bias
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def tiny_graph(
    path: str | Path,
    seed: int = 0,
    labels: list[str] | None = None,
    crop_size: int = 32,
    resize_size: int | None = None,
    interpolation: str = "bilinear",
    leave_out: tuple[str, ...] = (),
) -> Path:
    """Writes a classifier of `labels` (ten digits by default) at `crop_size` px, without the metadata keys
    `leave_out`; returns `path`."""
    labels = labels or [str(i) for i in range(10)]
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (3, len(labels)))
    bias = rng.normal(0, 1, len(labels))
    nodes = [
        _node("Cast", ["images"], ["floats"], to=FLOAT),
        _node("ReduceMean", ["floats"], ["colour"], axes=[1, 2], keepdims=0),
        _node("MatMul", ["colour", "weight"], ["product"]),
        _node("Add", ["product", "bias"], ["logits"]),
        _node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "tiny")
        + _bytes(5, _tensor("weight", weight))
        + _bytes(5, _tensor("bias", bias))
        + _bytes(11, _value_info("images", UINT8, ["N", crop_size, crop_size, 3]))
        + _bytes(12, _value_info("probabilities", FLOAT, ["N", len(labels)]))
    )
    meta = {
        "labels": json.dumps(labels),
        "arch": "tiny",
        "resize_size": str(resize_size or crop_size),
        "crop_size": str(crop_size),
        "interpolation": interpolation,
        "mean": json.dumps([0.5] * 3),
        "std": json.dumps([0.5] * 3),
        "source_sha256": "0" * 64,
        "metrics": json.dumps({}),
        "format_version": "1",
    }
    model = (
        _int(1, 8)  # ir_version
        + _bytes(2, "tests/tiny_onnx.py")
        + _bytes(7, graph)
        + _bytes(8, _int(2, 13))  # opset 13: ReduceMean still takes its axes as an attribute
        + b"".join(_bytes(14, _bytes(1, k) + _bytes(2, v)) for k, v in meta.items() if k not in leave_out)
    )
    Path(path).write_bytes(model)
    return Path(path)
