"""The serving preprocessing (core/preprocess.py) against torchvision's own Resize and CenterCrop, the eval transform
the weights were trained with (training/transforms.py): the geometry on many sizes, odd and even, both orientations,
and the pixels where the whole image is resized. Skipped where torch is not installed (a serving install)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from core.preprocess import boxed, center_crop_box, prepare, resized_size

torch = pytest.importorskip("torch")
tv_tensors = pytest.importorskip("torchvision.tv_tensors")
v2 = pytest.importorskip("torchvision.transforms.v2")

SIDES = [1, 2, 7, 31, 32, 33, 35, 40, 41, 63, 64, 65, 100, 223, 224, 225, 256, 257, 481, 640]
# (resize_size, crop_size): the digits model's, ImageNet's (232/224, 256/224), and odd gaps between the two
PREPROCESS = [(32, 32), (40, 32), (36, 33), (232, 224), (256, 224), (255, 224)]


def torchvision_resized(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(resize_size): read from a box's canvas, no pixels resized."""
    box = tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(height, width))
    new_height, new_width = v2.Resize(resize_size)(box).canvas_size
    return new_width, new_height


def torchvision_crop_offset(numbered: torch.Tensor, crop: int) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop(crop), read from the first pixel of a crop of an image [1, H, W]
    whose pixels are numbered."""
    first, width = int(v2.functional.center_crop(numbered, [crop, crop])[0, 0, 0]), numbered.shape[-1]
    return first % width, first // width


def test_the_resized_size_is_torchvisions_on_odd_and_even_sizes_both_ways():
    for width, height in itertools.product(SIDES + [200_000], SIDES):  # a 200,000 x 1 PNG too
        for resize_size, _ in PREPROCESS:
            expected = torchvision_resized(width, height, resize_size)
            assert resized_size(width, height, resize_size) == expected, (width, height, resize_size)
            assert resized_size(height, width, resize_size) == expected[::-1], (height, width, resize_size)


def test_the_centre_crop_is_torchvisions_with_its_rounding():
    for width, height in itertools.product(SIDES, SIDES):
        numbered = torch.arange(width * height).reshape(1, height, width)
        for crop in sorted({crop for _, crop in PREPROCESS} | {1, 2, 5}):
            if crop > min(width, height):  # torchvision pads first: the pixels test covers it
                continue
            left, top = torchvision_crop_offset(numbered, crop)
            assert center_crop_box(width, height, crop) == (left, top, left + crop, top + crop), (width, height, crop)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_pixels_are_torchvisions_resize_then_centre_crop(interpolation):
    rng = np.random.default_rng(0)
    modes = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
             "nearest": v2.InterpolationMode.NEAREST}  # fmt: skip
    sizes = [(w, h) for w, h in itertools.product([7, 32, 33, 41, 64, 65, 257], [7, 32, 35, 40, 100, 225])]
    checked = 0
    # a resize below the crop: torchvision pads with black (the odd gap: one pixel more on the right and bottom)
    for (width, height), (resize_size, crop) in itertools.product(sizes, [(32, 32), (40, 32), (36, 33), (28, 33)]):
        preprocess = {"resize_size": resize_size, "crop_size": crop, "interpolation": interpolation}
        if boxed(width, height, preprocess):  # resized only where the crop is, by design a few levels off
            continue
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        eval_transform = v2.Compose([v2.Resize(resize_size, modes[interpolation], antialias=True), v2.CenterCrop(crop)])
        expected = np.asarray(eval_transform(image))
        assert np.array_equal(prepare(image, preprocess), expected), (width, height, resize_size, crop)
        checked += 1
    assert checked > 140  # boxed images are the rare thin ones
