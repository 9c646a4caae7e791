"""Where a request's pixels are made: the backend that fills the graph's uint8 [N, crop, crop, 3] input.

The host plan stays in Python: the header checks and limits, the decoding budget (service/budget.py), EXIF
orientation, and the resize size and crop box of core/preprocess.py. A backend only does the pixel work that plan
describes.

- host: Pillow decodes, resizes and crops each image (service/pixels.py, service/decode.py), in threads or decoding
  processes, and the images are stacked on the host. The reference, and what every machine without a GPU runs.
- gpu (not built yet, issue 28): nvImageCodec decoding and core/resample.py's exact resize + crop as matrix
  products on the GPU, written into the input buffer ONNX Runtime binds.
"""

from __future__ import annotations

import typing as t
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from service.budget import Budget
from service.config import Limits
from service.pixels import Image, pixels


class Backend(t.Protocol):
    """Fills one request's batch: `await backend.batch(images, preprocess, limits, budget)` -> uint8
    [len(images), crop, crop, 3], or an InputError naming the first image refused."""

    name: str

    async def batch(
        self, images: t.Sequence[Image], preprocess: dict[str, Any], limits: Limits, budget: Budget
    ) -> np.ndarray: ...


class Host:
    """Pillow on the host: each image decoded within the budget in a thread or a decoding process, then stacked."""

    name = "host"

    def __init__(self, decoder: ProcessPoolExecutor | None = None) -> None:
        self.decoder = decoder

    async def batch(
        self, images: t.Sequence[Image], preprocess: dict[str, Any], limits: Limits, budget: Budget
    ) -> np.ndarray:
        one_each = await pixels(images, preprocess, limits, budget, self.decoder)
        return one_each[0][None] if len(one_each) == 1 else np.stack(one_each)
