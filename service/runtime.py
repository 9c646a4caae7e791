"""ONNX Runtime sessions for served graphs: the device choice, fixed batch shapes, and one batched call.

On the CUDA provider a session pays cuDNN's algorithm choice again whenever a call's input shape differs
from its previous call's, not only the first time it sees a shape: a session alternating two batch sizes
paid it on every call, many times what one session per size took (measured with ResNet-50 and EXHAUSTIVE
search: bench/README.md, 'On a GPU'). So on a GPU every call runs at one of a few fixed batch sizes, a batch
is padded up to the next one, and each size has a session of its own that only ever sees that shape. `warm()`
makes each session's first call (the algorithm search, or the CUDA graph capture) at start-up, before the
service reports ready.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core import metadata
from core.cores import session_threads
from core.devices import CPU, CUDA, DeviceError, uses_gpu  # the provider choice, shared with the export check
from service.config import CudaOptions, ServingConfig

logger = logging.getLogger(__name__)
# the axis that holds the images in each output a graph may have (an ensemble graph's member_probabilities
# is [members, N, classes]); every other output is batch-first
BATCH_AXIS = {"member_probabilities": 1}


def batch_sizes(config: ServingConfig, on_gpu: bool) -> list[int] | None:
    """The fixed batch sizes of every session call, ascending, or None for "any size".

    "auto" pads only on a GPU: there a session call at a batch size it did not run last pays cuDNN's
    algorithm choice again (bench/README.md, 'On a GPU'), while on the CPU provider a
    new shape costs nothing and padding would only add work. Powers of two up to max_batch_size keep
    the padding under half of any call.
    """
    sizes, largest = config.batching.sizes, config.batching.max_batch_size
    if sizes == "none" or (sizes == "auto" and not on_gpu):
        return None
    if sizes == "auto":
        powers = [2**i for i in range(largest.bit_length()) if 2**i < largest]
        return [*powers, largest]
    return sorted(sizes)


def cuda_provider_options(cuda: CudaOptions, device_id: int = 0) -> dict[str, str]:
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": cuda.cudnn_conv_algo_search,
        "prefer_nhwc": str(int(cuda.prefer_nhwc)),
        "enable_cuda_graph": str(int(cuda.cuda_graph)),
    }


_preloaded = False


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (`onnxruntime-gpu[cuda,cudnn]`) before the first CUDA
    session, so a machine with only the NVIDIA driver needs no CUDA toolkit; where the libraries are not
    installed as wheels, ONNX Runtime's loader falls back to the system's library path."""
    global _preloaded
    if not _preloaded and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _preloaded = True


class Graph:
    """One ONNX file with its metadata and sessions; `run` takes a whole batch.

    sizes: the batch sizes a session call runs at (ascending), or None to run every batch as it comes. A
    batch is padded with black images up to the next size and the padding's rows are cut from every
    output; a batch larger than the largest size runs in chunks of that size.
    """

    def __init__(
        self,
        path: str | Path,
        device: str,
        cpu_threads: int = 0,
        sizes: list[int] | None = None,
        cuda: CudaOptions | None = None,
        device_id: int = 0,
    ):
        """cpu_threads: ONNX Runtime's intra-op threads on the CPU provider (0: core.cores.session_threads, its
        own default of one per core where no CPU quota allows fewer).
        device_id: the GPU (CUDA device ordinal) the CUDA provider runs on."""
        self.path = Path(path)
        self.on_gpu = uses_gpu(device)
        self.sizes = sorted(sizes) if sizes else None
        cuda = cuda or CudaOptions()
        if cuda.cuda_graph and self.on_gpu and not self.sizes:
            raise DeviceError("cuda.cuda_graph needs fixed batch sizes (batching.sizes)")
        options = ort.SessionOptions()
        self.cpu_threads = cpu_threads or session_threads()
        options.intra_op_num_threads = self.cpu_threads
        # ONNX Runtime's intra-op threads spin-wait between calls by default, taking the cores that the
        # threads decoding uploads need: on 2 cores, turning it off took the service at one client from
        # 1.83 to 1.09 cores busy and raised its throughput by 10-23% at 16-64 clients (bench/README.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.on_gpu:
            preload_cuda_libraries()
            providers: list[Any] = [(CUDA, cuda_provider_options(cuda, device_id)), CPU]
        else:
            providers = [CPU]

        def session() -> ort.InferenceSession:
            s = ort.InferenceSession(str(self.path), options, providers=providers)
            if self.on_gpu and s.get_providers()[0] != CUDA:
                # ONNX Runtime silently falls back to the CPU when CUDA cannot be initialised
                raise DeviceError(f"device: {device}, but ONNX Runtime runs {self.path.name} on the CPU (no GPU)")
            return s

        first = session()
        self.provider = first.get_providers()[0]
        self.meta = metadata.decode(first.get_modelmeta().custom_metadata_map)
        self.outputs = [o.name for o in first.get_outputs()]
        crop = int(self.meta["crop_size"])
        self.input_shape = (crop, crop, 3)
        # a session per size on the GPU (each sees one shape); on the CPU a new shape costs nothing, so one
        # session serves every size and the weights are held once
        self.calls: dict[int, _Call] = {}
        # CUDA graphs: each size's session replays its kernels on buffers of its own (`run_at` cannot run there)
        self.captured = bool(cuda.cuda_graph and self.on_gpu)
        for i, size in enumerate(self.sizes or []):
            s = first if i == 0 or not self.on_gpu else session()
            self.calls[size] = _Captured(s, size, self.input_shape, device_id=device_id) if self.captured else _Call(s)
        self.any_size = _Call(first)

    def run_size(self, images: int) -> int:
        """Images a session runs for a batch of `images`, padding included."""
        if not self.sizes:
            return images
        largest = self.sizes[-1]
        full, rest = divmod(images, largest)
        return full * largest + (next(s for s in self.sizes if s >= rest) if rest else 0)

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] -> outputs by name, N rows each (padding removed)."""
        if not self.sizes:
            return self.any_size(pixels)
        largest = self.sizes[-1]
        parts = [self._padded(pixels[i : i + largest]) for i in range(0, len(pixels), largest)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts], axis=BATCH_AXIS.get(name, 0)) for name in self.outputs}

    def run_at(self, address: int, images: int, device: str = "cuda", device_id: int = 0) -> dict[str, np.ndarray]:
        """`run` of the uint8 [images, H, W, 3] batch that lies at `address` on `device` (a GPU backend's buffer, which
        ONNX Runtime then reads where it is, with no copy through the host): outputs by name, `images` rows each.
        With fixed sizes the buffer holds `run_size(images)` rows, those past `images` black (zeros): each chunk
        runs at its size from its own place in the buffer."""
        if not self.sizes:
            return self.any_size.at(address, (images, *self.input_shape), device, device_id)
        largest, row = self.sizes[-1], int(np.prod(self.input_shape))
        parts = []
        for start in range(0, images, largest):
            n = min(largest, images - start)
            size = next(s for s in self.sizes if s >= n)
            out = self.calls[size].at(address + start * row, (size, *self.input_shape), device, device_id)
            parts.append({name: np.take(v, range(n), axis=BATCH_AXIS.get(name, 0)) for name, v in out.items()})
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts], axis=BATCH_AXIS.get(name, 0)) for name in self.outputs}

    def _padded(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        n = len(pixels)
        size = next(s for s in self.sizes if s >= n)
        if n < size:
            pixels = np.concatenate([pixels, np.zeros((size - n, *pixels.shape[1:]), np.uint8)])
        out = self.calls[size](pixels)
        if n == size:
            return out
        return {name: np.take(v, range(n), axis=BATCH_AXIS.get(name, 0)) for name, v in out.items()}

    def warm(self) -> dict[int, float]:
        """Makes every fixed size's first calls now (cuDNN's algorithm search; the CUDA graph's capture,
        which ONNX Runtime makes on a session's second run); returns the seconds each size took."""
        seconds = {}
        for size, call in self.calls.items():
            pixels = np.zeros((size, *self.input_shape), np.uint8)
            start = time.perf_counter()
            for _ in range(3 if isinstance(call, _Captured) else 1):
                call(pixels)
            seconds[size] = time.perf_counter() - start
        if seconds:
            logger.info("%s: warmed batch sizes %s in %.2f s", self.path.name, list(seconds), sum(seconds.values()))
        return seconds


class _Call:
    """A session call with I/O binding: the batch goes to the device once and the results come back once;
    on the CPU provider it is the same code path at no extra cost."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("images", np.ascontiguousarray(pixels))
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu()))

    def at(self, address: int, shape: tuple[int, ...], device: str, device_id: int) -> dict[str, np.ndarray]:
        """The call on the uint8 batch of `shape` at `address` on `device` ("cuda", or "cpu" for a host buffer),
        bound where it lies."""
        binding = self.session.io_binding()
        binding.bind_input("images", device, device_id, np.uint8, list(shape), address)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu()))


class _Captured(_Call):
    """A session that runs one batch size as a CUDA graph: ONNX Runtime replays the captured kernels, which
    needs the input and output buffers at the same device addresses on every call, so they are allocated
    and bound once and each call copies the batch into the input buffer."""

    def __init__(
        self,
        session: ort.InferenceSession,
        size: int,
        input_shape: tuple[int, ...],
        device: str = "cuda",
        device_id: int = 0,
    ):
        """device: where the buffers live ("cpu" only to test the binding without a GPU); device_id: which GPU."""
        super().__init__(session)
        self.input = ort.OrtValue.ortvalue_from_shape_and_type((size, *input_shape), np.uint8, device, device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input("images", self.input)
        self.buffers = {}
        for o in session.get_outputs():
            shape = [d if isinstance(d, int) else size for d in o.shape]  # the one symbolic dimension is N
            self.buffers[o.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, device_id)
            self.binding.bind_ortvalue_output(o.name, self.buffers[o.name])

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.input.update_inplace(np.ascontiguousarray(pixels))
        self.session.run_with_iobinding(self.binding)
        return {name: v.numpy() for name, v in self.buffers.items()}

    def at(self, address: int, shape: tuple[int, ...], device: str, device_id: int) -> dict[str, np.ndarray]:
        # a captured graph replays its kernels on the buffers bound at capture: another address would need a copy
        # into `self.input` on the device (service/device_batch.py brings such a graph's crops to the host instead)
        raise NotImplementedError("cuda.cuda_graph sessions take their batch in their own bound buffer")
