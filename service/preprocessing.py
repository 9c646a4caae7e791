"""Where a request's pixels are made: the backend that fills the graph's uint8 [N, crop, crop, 3] input.

serving.yaml `preprocessing: auto | host | gpu` chooses it (service/config.py). Whatever the backend, the host plan
stays in Python: the header checks and limits, the decoding budget (service/budget.py), EXIF orientation, and the
resize size and crop box of core/preprocess.py. A backend only does the pixel work that plan describes.

- host: Pillow decodes, resizes and crops each image (service/pixels.py, service/decode.py), in threads or decoding
  processes, and the images are stacked on the host. The reference, and what every machine without a GPU runs.
- gpu: nvImageCodec decoding on the GPU and core/resample.py's exact resize + crop as matrix products on it, written
  into the input buffer ONNX Runtime binds (issue 28). Not built yet: `gpu` stops start-up (`choose_or_exit`), and
  `auto` runs host everywhere until it is.

The key is named `preprocessing`, not `preprocess`, because `preprocess` already means the resize and crop settings
a graph carries (core/metadata.py, `preprocess_of`), which serving.yaml does not change; and the values say where
the pixels are made, `host` rather than `cpu`, since `device: cpu` already names where the sessions run.
"""

from __future__ import annotations

import importlib.util
import typing as t
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from core.devices import gpu_present
from core.errors import exit_with
from service.budget import Budget
from service.config import Limits, ServingConfig
from service.pixels import Image, pixels

DECODER_PACKAGE = "nvidia-nvimgcodec-cu13"  # nvImageCodec for CUDA 13, the CUDA onnxruntime-gpu 1.31 links
DECODER_MODULE = "nvidia.nvimgcodec"


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


class PreprocessingError(Exception):
    """`preprocessing: gpu` where the GPU backend cannot run."""


def choose(config: ServingConfig) -> str:
    """The backend `config` runs here, "host" or "gpu"; a PreprocessingError for `gpu` where it cannot run."""
    if config.preprocessing in ("auto", "host"):
        # auto: "gpu" where a GPU, the decoder and sessions on the GPU are all here, once that backend exists
        return "host"
    if not gpu_present():
        raise PreprocessingError(
            "preprocessing: gpu, but this machine has no GPU: the GPU backend needs a GPU machine; "
            "serve with preprocessing: auto or host"
        )
    if not decoder_installed():
        raise PreprocessingError(
            f"preprocessing: gpu, but its decoder is not installed (pip install {DECODER_PACKAGE}); "
            "serve with preprocessing: auto or host"
        )
    raise PreprocessingError(
        "preprocessing: gpu, but this version has no GPU backend yet (issue 28); serve with preprocessing: auto or host"
    )


def decoder_installed() -> bool:
    """Whether nvImageCodec's Python package is installed (found, not imported: importing it loads CUDA)."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec(DECODER_MODULE) is not None


def choose_or_exit(config: ServingConfig) -> str:
    """`choose`, or its one line on stderr and exit status 2 (what `bentoml serve` does before any worker starts)."""
    try:
        return choose(config)
    except PreprocessingError as e:
        exit_with(str(e))


def backend(name: str, decoder: ProcessPoolExecutor | None = None) -> Backend:
    """The backend `choose` named, for one worker (decoder: its decoding processes, or None for threads)."""
    if name != "host":
        raise PreprocessingError(f"no {name} preprocessing backend in this version")
    return Host(decoder)
