"""The preprocessing backend (service/preprocessing.py): the host backend's batch is the pixels each image decodes to,
stacked, as before the boundary."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from service import preprocessing
from service.budget import Budget
from service.config import Limits
from service.decode import decode

PREPROCESS = {"resize_size": 40, "crop_size": 32, "interpolation": "bilinear"}


def _png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_the_host_backend_stacks_each_images_pixels():
    images = [_png((50, 40), 0), _png((33, 77), 1), _png((32, 32), 2)]
    limits = Limits()

    async def batch(upload: list[bytes]) -> np.ndarray:
        return await preprocessing.Host().batch(upload, PREPROCESS, limits, Budget(limits.decode_budget_bytes, 1000))

    got = asyncio.run(batch(images))
    expected = np.stack([decode(data, i, limits, PREPROCESS) for i, data in enumerate(images)])
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32, 3) and np.array_equal(got, expected)
    assert np.array_equal(asyncio.run(batch(images[:1])), expected[:1])
