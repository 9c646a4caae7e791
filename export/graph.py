"""Checkpoint -> ONNX graph that takes raw uint8 RGB pixels and returns probabilities.

The graph does what a client would otherwise have to know: cast, scale to 0..1, normalize with the
checkpoint's own mean/std, NHWC -> NCHW, the network, softmax. Input `images` uint8 [N, H, W, 3]
(N dynamic, H = W = crop_size); output `probabilities` float32 [N, num_classes].
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from core import metadata
from core.errors import UserError
from training.models import model_from_checkpoint, resolve_weights

OPSET = 18
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension declared to the exporter


class PixelClassifier(nn.Module):
    """uint8 NHWC pixels -> softmax probabilities, optionally running the network in float16."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], fp16: bool = False):
        super().__init__()
        self.model = model.half() if fp16 else model
        self.fp16 = fp16
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        if self.fp16:
            x = x.half()
        # softmax in float32 even for a float16 network: small probabilities keep their precision
        return torch.softmax(self.model(x).float(), dim=1)


def graph_metadata(checkpoint: dict[str, Any], source: str | Path, weights: str, fp16: bool) -> dict[str, Any]:
    pre = checkpoint["preprocess"]
    return {
        "labels": checkpoint["labels"],
        "arch": checkpoint["arch"],
        "num_classes": checkpoint["num_classes"],
        "resize_size": pre["resize_size"],
        "crop_size": pre["crop_size"],
        "interpolation": pre["interpolation"],
        "mean": pre["mean"],
        "std": pre["std"],
        "source_sha256": metadata.sha256_of(source),
        "metrics": checkpoint.get("metrics", {}),
        "format_version": metadata.FORMAT_VERSION,
        "precision": "fp16" if fp16 else "fp32",
        "weights": weights,
        "dataset": checkpoint["config"]["data"]["dataset"],
    }


def export_onnx(
    checkpoint: dict[str, Any], source: str | Path, out: str | Path, fp16: bool = False, weights: str = "best",
    opset: int = OPSET,
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Write the pixel-to-probability graph of `checkpoint` to `out`; returns the path and its metadata."""
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise UserError(f"the installed exporter cannot produce opset {opset}: onnx {onnx.__version__} has 7..{newest}")
    weights = resolve_weights(checkpoint, weights)
    model = model_from_checkpoint(checkpoint, weights)
    pre = checkpoint["preprocess"]
    wrapper = PixelClassifier(model, pre["mean"], pre["std"], fp16=fp16).eval()
    crop = int(pre["crop_size"])
    example = torch.zeros(2, crop, crop, 3, dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # a failed opset conversion is logged with a traceback and then ignored; we check the result below
            logging.getLogger("onnxscript.version_converter").setLevel(logging.CRITICAL)
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["images"],
                output_names=["probabilities"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs the gist
        if "opset" in str(e).lower():
            raise UserError(f"the installed exporter cannot produce opset {opset}: {str(e).splitlines()[0]}") from None
        raise
    model_proto = program.model_proto
    produced = next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    if produced != opset:  # the exporter falls back to its own opset with only a warning
        raise UserError(f"the installed exporter cannot produce opset {opset} for this model (it produced {produced})")
    model_proto.producer_name = "imgclf-export"
    meta = graph_metadata(checkpoint, source, weights, fp16)
    del model_proto.metadata_props[:]
    for key, value in metadata.encode(meta).items():
        model_proto.metadata_props.add(key=key, value=value)
    onnx.save_model(model_proto, str(out))
    return out, meta
