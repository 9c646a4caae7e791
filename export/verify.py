"""Every export checks itself: onnx.checker, then ONNX Runtime against PyTorch on real images.

The PyTorch side is exactly what `python -m training evaluate` does (training's eval transform,
the checkpoint's weights, softmax); the ONNX side is what the service does (core.preprocess on the
same decoded image, then the graph). Thresholds from docs/contract.md ("Export CLI"): fp32 max |diff|
<= 1e-4 with identical top-1; fp16 top-1 agreement >= 99.5%.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from core.errors import UserError
from core.preprocess import prepare
from training.data import BUNDLED, build_splits
from training.models import model_from_checkpoint
from training.transforms import eval_transform

FP32_MAX_ABS = 1e-4
FP16_MIN_AGREEMENT = 0.995


def check_graph(path: str | Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: works past the 2 GB protobuf limit
    except onnx.checker.ValidationError as e:
        raise UserError(f"{path} fails onnx.checker: {str(e).splitlines()[0]}") from None


def verification_images(checkpoint: dict[str, Any], data_root: str | None, count: int) -> list:
    """Up to `count` decoded images spread over the checkpoint's validation split (test if no val)."""
    data = copy.deepcopy(checkpoint["config"]["data"])
    data["limit"] = 0
    if data_root:
        data["root"] = data_root
        if data["dataset"] in BUNDLED:  # read the given folder as it is, never write a bundled set into it
            data["dataset"] = "imagefolder"
    try:
        splits = build_splits(data)
    except UserError as e:
        raise UserError(f"cannot load verification images ({e}); point --data at the dataset") from None
    split = "val" if "val" in splits.parts else "test"
    dataset = splits.dataset(split, None)
    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return [dataset[int(i)][0] for i in np.unique(picks)]


def session(path: str | Path, providers: list[str] | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([sess.run(["probabilities"], {"images": pixels[i : i + batch]})[0]
                           for i in range(0, len(pixels), batch)])  # fmt: skip


def torch_probabilities(checkpoint: dict[str, Any], weights: str, images: list) -> np.ndarray:
    model = model_from_checkpoint(checkpoint, weights)
    transform = eval_transform(checkpoint["preprocess"])
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            batch = torch.stack([transform(im) for im in images[i : i + 64]])
            out.append(torch.softmax(model(batch), dim=1).numpy())
    return np.concatenate(out)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(reference)),
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def verify_export(
    path: str | Path, checkpoint: dict[str, Any], weights: str, fp16: bool, images: list, providers: list[str] | None
) -> dict[str, Any]:
    """Figures of the ONNX graph against PyTorch; `passed` says whether they meet the thresholds."""
    check_graph(path)
    reference = torch_probabilities(checkpoint, weights, images)
    pixels = np.stack([prepare(im, checkpoint["preprocess"]) for im in images])
    # fp32 parity is judged on the CPU provider: GPU kernels (TF32, other reductions) are not a reference
    figures = compare(reference, run_batched(session(path, None if not fp16 else providers), pixels))
    figures["precision"] = "fp16" if fp16 else "fp32"
    if fp16:
        figures["passed"] = figures["top1_agreement"] >= FP16_MIN_AGREEMENT
        figures["threshold"] = f"top-1 agreement >= {FP16_MIN_AGREEMENT}"
    else:
        figures["passed"] = figures["max_abs_diff"] <= FP32_MAX_ABS and figures["top1_agreement"] == 1.0
        figures["threshold"] = f"max abs diff <= {FP32_MAX_ABS} and identical top-1"
    return figures
