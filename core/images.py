"""Decoding an image file into the RGB picture the models see.

Deliberately free of torch: the serving side must convert uploads exactly as training converted
its files (docs/contract.md, "The ONNX graph"), and a serving container carries no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# the file names training's image folders and service.predict's folders are searched for (lower case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# 16-bit and 32-bit integer modes PIL uses for 16-bit PNG/TIFF.
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any common PIL mode -> 8-bit RGB, upright, first frame.

    EXIF orientation is applied (phones store rotated JPEGs). 16-bit images are scaled to 8 bits
    rather than clipped. Alpha is dropped, as torchvision's ImageFolder loader does, so a model
    trained on folders loaded elsewhere with torchvision sees the same pixels here.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    # in place: without it Pillow returns a copy of the whole decoded image even when there is nothing to turn
    # (4% of the decoding threads' time on 500x375 photos, py-spy, bench/README.md)
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in _WIDE_INT_MODES:
        image = Image.fromarray(_eight_bits(np.asarray(image)), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8), "L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _eight_bits(wide: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit "I") values -> uint8: round(x * 255 / 65535) clipped to 0..255, or the values clipped to
    0..255 for an "I" image whose values all fit in 8 bits. In integers, at 5 bytes a pixel at most (a float64
    copy and its products took 8 bytes a pixel each: 4.9 GB for four 6000 x 6000 16-bit PNGs). x * 255 / 65535 is
    x / 257, never exactly halfway between two integers (257 is odd), so (2x + 257) // 514 rounds it as round() does.
    """
    eight_bit_values = wide.dtype == np.int32 and wide.max(initial=0) <= 255
    if eight_bit_values:
        return np.clip(wide, 0, 255).astype(np.uint8)
    values = wide.astype(np.int64) if wide.dtype == np.int32 else wide.astype(np.uint32)
    if wide.dtype == np.int32:
        values = np.clip(values, 0, 65535, out=values)
    values *= 2
    values += 257
    values //= 514
    return values.astype(np.uint8)


def open_rgb(source: str | Path | BinaryIO) -> Image.Image:
    """Open, fully decode and convert one image; raises PIL/OSError on a bad or truncated file."""
    with Image.open(source) as image:
        image.load()
        return to_rgb(image)
