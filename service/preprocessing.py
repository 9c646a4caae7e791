"""Where a request's pixels are made: the backend that fills the graph's uint8 [N, crop, crop, 3] input.

serving.yaml `preprocessing: auto | host | gpu` chooses it (service/config.py). Whatever the backend, the host plan
stays in Python: the header checks and limits, the decoding budget (service/budget.py), EXIF orientation, and the
resize size and crop box of core/preprocess.py. A backend only does the pixel work that plan describes.

- host: Pillow decodes, resizes and crops each image (service/pixels.py, service/decode.py), in threads or decoding
  processes, and the images are stacked on the host. The reference, and what every machine without a GPU runs.
- gpu: nvImageCodec decodes each JPEG it can on the worker's GPU and core/resample.py's exact resize + crop runs there
  as an ONNX graph (service/device_pixels.py); every other image takes the host path. The crops stay on the GPU: a
  batch is copied together there and the model reads it in place (service/device_batch.py). Opt-in: `auto` runs
  host everywhere until the GPU backend's parity and speed have been measured on a GPU (issue 28;
  bench/gpu_check.sh). `gpu` where it cannot run stops start-up (`choose_or_exit`).

The key is named `preprocessing`, not `preprocess`, because `preprocess` already means the resize and crop settings
a graph carries (core/metadata.py, `preprocess_of`), which serving.yaml does not change; and the values say where
the pixels are made, `host` rather than `cpu`, since `device: cpu` already names where the sessions run.
"""

from __future__ import annotations

import importlib.util
import typing as t
from typing import Any

import numpy as np

from core.devices import DeviceError, gpu_present, uses_gpu
from core.errors import UserError, exit_with
from service import device_batch
from service.budget import Budget
from service.config import Limits, ServingConfig
from service.device_pixels import DECODER_PACKAGES
from service.pixels import Image, pixels

if t.TYPE_CHECKING:
    from service.decoders import DecodingProcesses
    from service.device_pixels import DevicePixels
    from service.runtime import Graph

DECODER_MODULE = "nvidia.nvimgcodec"
# what the gpu backend needs beyond the serving packages: the decoder, and onnx, which builds its resize graph;
# `make bento` and `make container` add them to a Bento whose config says `preprocessing: gpu` (deploy/)
GPU_PACKAGES = (*DECODER_PACKAGES, "onnx")


class Backend(t.Protocol):
    """Makes one request's pixels, `await backend.batch(images, preprocess, limits, budget)` (an InputError naming the
    first image refused), and runs a batch of several requests' through a graph, `backend.run(graph, parts)`."""

    name: str

    async def batch(
        self, images: t.Sequence[Image], preprocess: dict[str, Any], limits: Limits, budget: Budget
    ) -> np.ndarray | device_batch.Crops: ...

    def run(self, graph: Graph, parts: t.Sequence[np.ndarray | device_batch.Crops]) -> dict[str, np.ndarray]: ...

    def warm(self, preprocess: dict[str, Any]) -> None: ...


class Host:
    """Pillow on the host: each image decoded within the budget in a thread or a decoding process, then stacked."""

    name = "host"

    def __init__(self, decoder: DecodingProcesses | None = None) -> None:
        self.decoder = decoder

    async def batch(
        self, images: t.Sequence[Image], preprocess: dict[str, Any], limits: Limits, budget: Budget
    ) -> np.ndarray:
        """uint8 [len(images), crop, crop, 3]."""
        return _stacked(await pixels(images, preprocess, limits, budget, self.decoder))

    def run(self, graph: Graph, parts: t.Sequence[np.ndarray | device_batch.Crops]) -> dict[str, np.ndarray]:
        """The graph's outputs for the requests' pixels `parts`, in order (run on the engine's session thread)."""
        return graph.run(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def warm(self, preprocess: dict[str, Any]) -> None:
        """Makes at start-up what the first request's pixels would (Pillow needs nothing made)."""


class Gpu(Host):
    """The images `device` takes (service/device_pixels.py: JPEGs) decoded and resized on it, the rest by Pillow,
    image by image, in the host backend's threads and within its budget (no decoding processes). With `keep`, a
    request's crops stay where they were made and a batch is gathered there (service/device_batch.py)."""

    name = "gpu"

    def __init__(self, device: DevicePixels) -> None:
        super().__init__(None)
        self.device = device
        self.memory = device_batch.Memory.of(device)

    async def batch(
        self, images: t.Sequence[Image], preprocess: dict[str, Any], limits: Limits, budget: Budget
    ) -> np.ndarray | device_batch.Crops:
        """The host backend's batch where every image took the host path, else the request's `device_batch.Crops`."""
        one_each = await pixels(images, preprocess, limits, budget, None, self.device)
        if all(isinstance(crop, np.ndarray) for crop in one_each):
            return _stacked(one_each)
        return device_batch.Crops(one_each)

    def run(self, graph: Graph, parts: t.Sequence[np.ndarray | device_batch.Crops]) -> dict[str, np.ndarray]:
        if all(isinstance(part, np.ndarray) for part in parts):
            return super().run(graph, parts)
        return device_batch.gather(graph, parts, self.memory)

    def warm(self, preprocess: dict[str, Any]) -> None:
        self.device.warm(preprocess)


def _stacked(one_each: list) -> np.ndarray:
    return one_each[0][None] if len(one_each) == 1 else np.stack(one_each)


class PreprocessingError(UserError):
    """`preprocessing: gpu` where the GPU backend cannot run."""


def choose(config: ServingConfig) -> str:
    """The backend `config` runs here, "host" or "gpu"; a PreprocessingError for `gpu` where it cannot run."""
    return choose_for(config.preprocessing, config.device)


def wanted(preprocessing: str, device: str) -> bool:
    """Whether `preprocessing` asks for the gpu backend with sessions on `device`, by the rules that hold whatever the
    machine (what a Ray driver can check for the cluster's GPUs); a PreprocessingError for a value or a device that
    can never run it."""
    if preprocessing not in ("auto", "host", "gpu"):
        raise PreprocessingError(f"preprocessing must be auto, host or gpu, got {preprocessing!r}")
    if preprocessing != "gpu":
        # auto: "gpu" once bench/gpu_check.sh has measured the GPU backend's parity and speed on a GPU (issue 28)
        return False
    if device == "cpu":
        raise PreprocessingError(
            "preprocessing: gpu, but the sessions run on the CPU (device: cpu); use device cuda, or preprocessing "
            "auto or host"
        )
    return True


def choose_for(preprocessing: str, device: str) -> str:
    """The backend that `preprocessing` (auto | host | gpu) runs here for sessions on `device` (auto | cpu | cuda):
    the one rule the service, `service.predict` and its Ray actors share."""
    if not wanted(preprocessing, device):
        return "host"
    if not gpu_present():
        raise PreprocessingError(
            "preprocessing: gpu, but this machine has no GPU: the GPU backend needs a GPU machine; "
            "use preprocessing auto or host"
        )
    if not decoder_installed():
        raise PreprocessingError(
            f"preprocessing: gpu, but its decoder is not installed (pip install {' '.join(GPU_PACKAGES)}); "
            "use preprocessing auto or host"
        )
    try:
        on_gpu = uses_gpu(device)
    except DeviceError as e:
        raise PreprocessingError(str(e)) from None
    if not on_gpu:
        raise PreprocessingError(
            f"preprocessing: gpu, but the sessions run on the CPU (device: {device}); "
            "use device cuda, or preprocessing auto or host"
        )
    return "gpu"


def decoder_installed() -> bool:
    """Whether nvImageCodec's Python package is installed (found, not imported: importing it loads CUDA), and onnx,
    which builds the resize graph (core/resample.py; a project dependency that a Bento carries only for `gpu`)."""
    found = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec(DECODER_MODULE) is not None
    return found and importlib.util.find_spec("onnx") is not None


def choose_or_exit(config: ServingConfig) -> str:
    """`choose`, or its one line on stderr and exit status 2 (what `bentoml serve` does before any worker starts)."""
    try:
        return choose(config)
    except PreprocessingError as e:
        exit_with(str(e))


def device_pixels(name: str, device_id: int = 0, keep: bool = False) -> DevicePixels | None:
    """The gpu backend's pixel work on GPU `device_id` where `choose` named "gpu", else None (keep: its crops stay on
    the GPU, for the service's batches). Made after the sessions, which load the CUDA libraries it uses."""
    if name != "gpu":
        return None
    from service.device_pixels import DevicePixels

    return DevicePixels(device_id, keep)


def backend(name: str, decoder: DecodingProcesses | None = None, device_id: int = 0) -> Backend:
    """The backend `choose` named, for one worker (decoder: its decoding processes, or None for threads; device_id:
    the worker's GPU, for `gpu`, whose sessions must already be made: they load the CUDA libraries it uses)."""
    if name == "host":
        return Host(decoder)
    device = device_pixels(name, device_id, keep=True)
    if device is not None:
        return Gpu(device)
    raise PreprocessingError(f"no {name} preprocessing backend")
