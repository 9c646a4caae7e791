"""The centre crop's offsets worked out by hand: torchvision's round((size - crop) / 2) rounds half to even, which
differs from rounding half up only where the gap is 2 modulo 4 (5 px: 2.5 -> 2, not 3). Torch-free, so a serving-only
install checks it too; tests/test_preprocess.py compares the same with torchvision itself where torch is installed."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.preprocess import center_crop_box, prepare


def test_a_half_pixel_offset_rounds_to_even():
    # gaps 5 and 7: 2.5 -> 2 and 3.5 -> 4; gaps 3 and 1: 1.5 -> 2 and 0.5 -> 0
    assert center_crop_box(37, 39, 32) == (2, 4, 34, 36)
    assert center_crop_box(35, 33, 32) == (2, 0, 34, 32)


def test_the_served_crop_of_an_image_at_its_resize_size_is_those_rows_and_columns():
    # 37 x 39 under resize 37 is not resized (the shorter side is 37 already), so the crop is plain indexing
    pixels = np.random.default_rng(0).integers(0, 256, (39, 37, 3), dtype=np.uint8)
    preprocess = {"resize_size": 37, "crop_size": 32, "interpolation": "bilinear"}
    assert np.array_equal(prepare(Image.fromarray(pixels, "RGB"), preprocess), pixels[4:36, 2:34])
