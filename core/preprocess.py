"""Serving-side preprocessing: PIL image -> the uint8 [H, W, 3] pixels an exported graph takes.

No torch here: the service uses this. It reproduces the geometry of training's `eval_transform`
(resize of the shorter side with the checkpoint's interpolation, then a center crop) with PIL,
which is what torchvision itself calls for PIL images, so the pixels are identical; the scaling,
mean/std normalization and softmax happen inside the ONNX graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes `resize_size`, the longer keeps the ratio
    (truncated, as torchvision's `_compute_resized_output_size` does)."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets: round((size - crop) / 2), Python's round-half-to-even."""
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


def prepare(image: Image.Image, preprocess: dict[str, Any]) -> np.ndarray:
    """RGB PIL image -> uint8 array [crop, crop, 3], equal to training's eval resize + center crop."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}; decode with core.images.to_rgb")
    size = resized_size(*image.size, int(preprocess["resize_size"]))
    if size != image.size:
        image = image.resize(size, RESAMPLE[preprocess["interpolation"]])
    crop = int(preprocess["crop_size"])
    if crop > min(image.size):  # torchvision pads with zeros before cropping an image smaller than the crop
        canvas = Image.new("RGB", (max(crop, image.width), max(crop, image.height)))
        canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
        image = canvas
    return np.asarray(image.crop(center_crop_box(*image.size, crop)), dtype=np.uint8)
