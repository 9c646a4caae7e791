"""Expected values worked out without the product's code, for the tests that check it.

`eval_crop`: training's eval transform (torchvision's Resize of the shorter side, then CenterCrop) done with Pillow
alone, its geometry written out here from torchvision's rules rather than taken from core/preprocess.py; torchvision
resizes PIL images with Pillow itself, so where torch is installed tests/test_preprocess.py checks the product
against torchvision directly. This is for the torch-free tests.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def eval_crop(image: Image.Image, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 [crop_size, crop_size, 3] of an RGB image: the whole image resized, the shorter side to `resize_size`
    and the longer truncated (torchvision's `_compute_resized_output_size`), then the centre `crop_size` px, offsets
    rounded half to even (its `center_crop`: `int(round((size - crop) / 2.0))`). No padding: the image must cover
    the crop once resized."""
    width, height = image.size
    if width <= height:
        new = (resize_size, int(resize_size * height / width))
    else:
        new = (int(resize_size * width / height), resize_size)
    assert min(new) >= crop_size, (new, crop_size)
    left, top = round((new[0] - crop_size) / 2), round((new[1] - crop_size) / 2)
    resized = image.resize(new, getattr(Image.Resampling, interpolation.upper()))
    return np.asarray(resized.crop((left, top, left + crop_size, top + crop_size)))
