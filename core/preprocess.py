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


# Resizing only the region the centre crop keeps (`Image.resize(..., box=...)`) gives pixels up to a few levels off
# the whole resize (Pillow's filter offsets round differently), so it is done only where the whole resize would be
# over this many crops' worth of pixels: an image more than ~16 times as long as it is wide, never a photo, where
# the whole resize is what costs (a 200,000 x 1 PNG resized whole to 32 rows is 6,400,000 x 32 pixels).
BOX_OVER_CROPS = 16
# JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale, which changes pixels slightly; it is used only where the
# shorter side stays at least this many times the resize size, so the resize still averages many pixels into one.
DRAFT_GAP = 4


def draft_request(width: int, height: int, resize_size: int) -> tuple[int, int] | None:
    """The size to ask JPEG's `Image.draft` for (it picks the smallest scale at least this large), or None where
    the image is not large enough for a draft to leave the answer practically unchanged."""
    short = min(width, height)
    if short < 2 * DRAFT_GAP * resize_size:  # not even a 1/2 scale would keep DRAFT_GAP x resize_size
        return None
    scale = DRAFT_GAP * resize_size / short
    return max(1, -(-int(width * scale * 1000) // 1000)), max(1, -(-int(height * scale * 1000) // 1000))


def boxed(width: int, height: int, preprocess: dict[str, Any]) -> bool:
    """Whether `prepare` resizes only the crop's region of a width x height image (BOX_OVER_CROPS)."""
    w, h = resized_size(width, height, int(preprocess["resize_size"]))
    crop = int(preprocess["crop_size"])
    return (w, h) != (width, height) and crop <= min(w, h) and w * h > BOX_OVER_CROPS * crop * crop


def prepare(image: Image.Image, preprocess: dict[str, Any]) -> np.ndarray:
    """RGB PIL image -> uint8 array [crop, crop, 3], equal to training's eval resize + center crop."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}; decode with core.images.to_rgb")
    size = resized_size(*image.size, int(preprocess["resize_size"]))
    crop = int(preprocess["crop_size"])
    resample = RESAMPLE[preprocess["interpolation"]]
    if boxed(*image.size, preprocess):
        left, top, right, bottom = center_crop_box(*size, crop)
        sx, sy = image.width / size[0], image.height / size[1]
        box = (left * sx, top * sy, right * sx, bottom * sy)
        return np.asarray(image.resize((crop, crop), resample, box=box), dtype=np.uint8)
    if size != image.size:
        image = image.resize(size, resample)
    if crop > min(image.size):  # torchvision pads with zeros before cropping an image smaller than the crop
        canvas = Image.new("RGB", (max(crop, image.width), max(crop, image.height)))
        canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
        image = canvas
    box = center_crop_box(*image.size, crop)
    if box == (0, 0, *image.size):  # already the crop (a 32x32 upload to a 32x32 model): no copy to crop it
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.crop(box), dtype=np.uint8)
