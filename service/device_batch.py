"""The gpu backend's batch, made where its crops are: each request's crops stay on the device they were made on
(service/device_pixels.py), and a batch is copied together there, into one input buffer that the model's session
reads in place (runtime.Graph.run_at). A crop made on the GPU never crosses to the host; the host backend's cross to
the device once a batch, inside the session call.

    memory = Memory.of(device)                   # the device's buffers and copies (a GPU's, or the host's in tests)
    outputs = gather(graph, parts, memory)       # parts: per request, uint8 [n, crop, crop, 3] or its Crops

Ordering: a crop is finished once its resize has returned (ONNX Runtime waits for its stream at the end of a run).
The copies go on a stream of their own, which is waited for before the model's session runs on its own.

Threads: `gather` runs on the engine's one session thread (service/engine.py), so one input buffer a shape serves
every model of the worker: each call has read it before the next gather writes it.
"""

from __future__ import annotations

import ctypes
import typing as t

import numpy as np
import onnxruntime as ort

if t.TYPE_CHECKING:
    from service.device_pixels import DevicePixels
    from service.runtime import Graph

# a request's pixels as the gpu backend hands them to the batcher: each image's crop, an OrtValue where the device
# made it, or a host array where it left the image to Pillow
Crop = np.ndarray | ort.OrtValue
_UINT8 = 2  # ONNX's element type number for uint8, what OrtValue.element_type() gives
_DEFAULT = 4  # cudaMemcpyDefault: the direction from the addresses (host and device share one address space)


class Crops(list):
    """One request's crops, in order (`Crop`s, uint8 [crop, crop, 3] each)."""


class Memory:
    """Input buffers on one device, and copies and zeros into them on its stream: a GPU's through the CUDA runtime
    (the one onnxruntime-gpu's wheels load), or the host's ("cpu": what the tests run, and what a GPU's would do)."""

    def __init__(self, where: str, device_id: int = 0, stream: int = 0) -> None:
        self.where, self.device_id, self.stream = where, device_id, stream
        self.buffers: dict[tuple[int, ...], ort.OrtValue] = {}
        self.cuda = _runtime() if where == "cuda" else None

    @classmethod
    def of(cls, device: DevicePixels) -> Memory:
        """Buffers where `device` makes its crops; on a GPU, copies on a stream of their own: waiting for them does
        not wait for the resizes the decoding threads are running meanwhile on the device's stream."""
        if device.where == "cpu":
            return cls("cpu")
        from service.device_pixels import cuda_stream

        device_id = device.device_id or 0
        return cls(device.where, device_id, cuda_stream(device_id))

    def buffer(self, rows: int, shape: tuple[int, ...]) -> int:
        """The address of a uint8 buffer of at least `rows` x `shape` here, kept for the next batch (made larger when
        a batch needs more rows)."""
        held = self.buffers.get(shape)
        if held is None or held.shape()[0] < rows:
            held = ort.OrtValue.ortvalue_from_shape_and_type([rows, *shape], np.uint8, self.where, self.device_id)
            self.buffers[shape] = held
        return int(held.data_ptr())

    def copy(self, to: int, source: int, size: int) -> None:
        if self.cuda is None:
            ctypes.memmove(to, source, size)
        else:
            self._check(self.cuda.cudaMemcpyAsync(to, source, size, _DEFAULT, self.stream), "cudaMemcpyAsync")

    def zero(self, to: int, size: int) -> None:
        if self.cuda is None:
            ctypes.memset(to, 0, size)
        else:
            self._check(self.cuda.cudaMemsetAsync(to, 0, size, self.stream), "cudaMemsetAsync")

    def begin(self) -> None:
        """Before the copies of one batch: the CUDA runtime's current device is the calling thread's own."""
        if self.cuda is not None:
            self._check(self.cuda.cudaSetDevice(self.device_id), "cudaSetDevice")

    def wait(self) -> None:
        """Returns once every copy and zero made so far is done."""
        if self.cuda is not None:
            self._check(self.cuda.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def _check(self, status: int, call: str) -> None:
        if status:
            assert self.cuda is not None
            reason = self.cuda.cudaGetErrorString(status).decode()
            raise RuntimeError(f"{call} failed on GPU {self.device_id}: {reason}")


def gather(graph: Graph, parts: t.Sequence[np.ndarray | Crops], memory: Memory) -> dict[str, np.ndarray]:
    """`graph.run` of the batch that `parts` make in order (each a request's uint8 [n, crop, crop, 3] from the host,
    or its `Crops`), copied together into `memory`'s buffer and read there: outputs by name, a row an image."""
    images = sum(len(part) for part in parts)
    if graph.captured:
        # a CUDA graph replays its kernels on the input buffer bound when it was captured: the crops come to the host
        # and the session copies them there (cuda.cuda_graph is opt-in; gathering into that buffer is not built)
        return graph.run(np.concatenate([on_host(part) for part in parts]))
    rows, shape = graph.run_size(images), graph.input_shape
    row = int(np.prod(shape))
    start = memory.buffer(rows, shape)
    memory.begin()
    held = []  # host arrays made contiguous here live until the copies from them are done
    at = start
    for part in parts:
        if isinstance(part, np.ndarray):
            part = _fits(np.ascontiguousarray(part), (len(part), *shape))
            held.append(part)
            memory.copy(at, part.ctypes.data, part.nbytes)
            at += part.nbytes
            continue
        for crop in part:
            if isinstance(crop, np.ndarray):
                crop = _fits(np.ascontiguousarray(crop), shape)
                held.append(crop)
                memory.copy(at, crop.ctypes.data, row)
            else:
                _fits(crop, shape)
                memory.copy(at, crop.data_ptr(), row)
            at += row
    if rows > images:  # the fixed batch size's padding: black images, as Graph.run pads
        memory.zero(at, (rows - images) * row)
    memory.wait()
    return graph.run_at(start, images, memory.where, memory.device_id)


def _fits(crop: Crop, shape: tuple[int, ...]) -> Crop:
    """`crop`, checked to hold exactly `shape` uint8 values: a copy of another size would write past its row."""
    if isinstance(crop, np.ndarray):
        got, uint8 = crop.shape, crop.dtype == np.uint8
    else:
        got, uint8 = tuple(crop.shape()), crop.element_type() == _UINT8
    if tuple(got) != shape or not uint8:
        raise ValueError(f"a crop of {tuple(got)}{'' if uint8 else ' (not uint8)'} in a batch of uint8 {shape}")
    return crop


def on_host(part: np.ndarray | Crops) -> np.ndarray:
    """A request's pixels as one host array, uint8 [n, crop, crop, 3]: its crops brought from where they were made."""
    if isinstance(part, np.ndarray):
        return part
    return np.stack([crop if isinstance(crop, np.ndarray) else crop.numpy() for crop in part])


def _runtime() -> ctypes.CDLL:
    """The CUDA runtime, with the argument types of what is called here."""
    from service.device_pixels import cuda_runtime

    cuda = cuda_runtime()
    pointer, size, stream = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p
    cuda.cudaMemcpyAsync.argtypes = [pointer, pointer, size, ctypes.c_int, stream]
    cuda.cudaMemsetAsync.argtypes = [pointer, ctypes.c_int, size, stream]
    cuda.cudaStreamSynchronize.argtypes = [stream]
    cuda.cudaSetDevice.argtypes = [ctypes.c_int]
    cuda.cudaGetErrorString.restype = ctypes.c_char_p
    return cuda
