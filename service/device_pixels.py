"""The `gpu` preprocessing backend's pixel work: nvImageCodec decodes a JPEG where ONNX Runtime runs, and
core/resample.py's graph resizes and crops it there, Pillow's pixels bit for bit (tests/test_resample.py).

    device = DevicePixels(0)              # GPU 0: nvImageCodec's GPU decoders, the CUDA provider
    device = DevicePixels(None)           # the CPU: its CPU decoder and the CPU provider (what the tests run)
    if device.takes(image, preprocess):   # a header already read by Pillow (service/decode.py)
        crop = device.pixels(data, image.size, preprocess)   # uint8 [crop, crop, 3] on the host, or None

What it takes: a baseline JPEG of three components (Pillow's mode RGB), with no EXIF rotation, of at most
DEVICE_PIXELS, that the host path would not decode in JPEG's draft mode nor resize by a box (`resample.host_only`).
Everything else (PNG, GIF, WebP, grayscale or CMYK JPEGs, progressive ones, rotated ones, panoramas) stays on the host
path, image by image, as does an image the decoder gives up on or the device fails on (`pixels` answers None; a
failure is logged, at most a line a minute). The host plan is unchanged: service/decode.py reads the header with
Pillow and checks the limits, and the decoding budget counts the image as if the host decoded it.

The resize's weights (float64 matrices, one pair an image size) are made once a size and kept where the resize runs
(`WEIGHTS_BYTES`): bound from the host they were 1.5 MB sent with every 500x375 photo.

Ordering on a GPU: nvImageCodec decodes on the CUDA stream it is given and ONNX Runtime runs on the stream its CUDA
provider is given (`user_compute_stream`); both get one stream made here, so the resize reads a finished decode.
Where the crop goes: in the service (`keep`), it stays on the device as an OrtValue, and the engine's batch is copied
together there and read in place by the model (service/device_batch.py); `service.predict` and its Ray actors bring it
back to the host (bound to "cpu") and batch host arrays as the host backend does.

Threads: a worker's decoding threads call `pixels` together, and nvImageCodec 0.9's decoder, called from 8 threads at
once, crashed the process ("pure virtual method called", 2 runs of 3 on the CPU): one call decodes at a time. The
images other threads bring while it runs wait, and the next of those threads decodes all of them in one call (a list:
nvJPEG decodes a batch at once, where one image a call leaves most of a GPU idle); a lone image is a call of one. The
resize graph (an ONNX Runtime session, safe to run from threads) runs in each thread for its own image.

Measured on the CPU only (no GPU was lent while it was written): parity with the host path, the fallbacks, the calls
from many threads, and the binding path with "cpu" buffers. The GPU variant is what bench/gpu_check.sh checks where a
GPU is lent (bench/gpu_preprocess.py, then the service with `preprocessing: gpu`).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import io
import logging
import math
import os
import threading
import time
import typing as t
from typing import Any

import numpy as np
from PIL import Image

from core import resample

if t.TYPE_CHECKING:
    from onnxruntime import OrtValue

logger = logging.getLogger("service")

# the nvImageCodec packages for CUDA 13, the CUDA onnxruntime-gpu 1.31 links; nvJPEG is what it decodes JPEG with
DECODER_PACKAGES = ("nvidia-nvimgcodec-cu13", "nvidia-nvjpeg")
ORIENTATION = 0x0112  # the EXIF tag
# the largest image (width x height) decoded and resized on the device: its resize holds the image in float64 (24 bytes
# a pixel; 144 MB at this size) while the decoding threads run several at once, so a panorama or a client's giant
# JPEG goes to the host path, whose decoding budget bounds it (photos whose shorter side is 2048 px and more already
# do: JPEG's draft mode, core/resample.py `host_only`)
DEVICE_PIXELS = 6_000_000
FAILURE_LOG_S = 60.0  # at most one line this often about images the device failed on
# the resize weights a device keeps for the image sizes it has seen: 1.5 MB for a 500x375 photo to 224 px, 12 MB for a
# 4000x3000 one, so a few dozen sizes at the least
WEIGHTS_BYTES = 128 * 2**20


class DevicePixels:
    """Decode + resize + crop on one device: a GPU (`device_id`) or, for tests, the CPU (None)."""

    def __init__(self, device_id: int | None, keep: bool = False) -> None:
        """keep: `pixels` answers each crop as an OrtValue where it was made (for service/device_batch.py), not as a
        host array."""
        import onnxruntime as ort

        # nvImageCodec prints two lines for each image it cannot decode: a client sending broken JPEGs would write
        # the log at will (issue 31); what it cannot decode goes to Pillow, whose refusal names the problem
        os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
        from nvidia import nvimgcodec

        self.device_id, self.keep = device_id, keep
        # the images waiting to be decoded, and whether a thread is decoding a batch (`_decoded`)
        self.turn, self.leading = threading.Condition(), False
        self.waiting: list[_Waiting] = []
        if device_id is None:
            self.decoder = nvimgcodec.Decoder(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)]
            )
            self.stream, self.where = 0, "cpu"
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            self.stream, self.where = cuda_stream(device_id), "cuda"
            self.decoder = nvimgcodec.Decoder(
                device_id=device_id,
                backends=[nvimgcodec.Backend(nvimgcodec.GPU_ONLY), nvimgcodec.Backend(nvimgcodec.HYBRID_CPU_GPU)],
            )
            cuda = {"device_id": device_id, "user_compute_stream": str(self.stream)}
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        self.sessions = {
            order: ort.InferenceSession(resample.graph(order), providers=providers) for order in (True, False)
        }
        # each image size's weights, where the resize reads them (WEIGHTS_BYTES)
        self.weights: collections.OrderedDict[tuple, _Weights] = collections.OrderedDict()
        # guards the weights and the failure count, which the decoding threads share
        self.weights_bytes, self.lock = WEIGHTS_BYTES, threading.Lock()
        self.failures, self.logged = 0, -math.inf  # device failures not logged yet; when the last line was

    def takes(self, image: Image.Image, preprocess: dict[str, Any]) -> bool:
        """Whether this image (its header read, nothing decoded) is decoded here rather than by Pillow."""
        width, height = image.size
        if image.format != "JPEG" or image.mode != "RGB" or image.info.get("progressive"):
            return False
        if width * height > DEVICE_PIXELS:
            return False
        if resample.host_only(width, height, preprocess):
            return False
        return "exif" not in image.info or image.getexif().get(ORIENTATION, 1) == 1

    def warm(self, preprocess: dict[str, Any]) -> bool:
        """Decodes and resizes a small photo-shaped JPEG here now, so that nvImageCodec's decoder and the resize's
        first calls on the device (their handles, kernels and memory) are made at start-up rather than by the first
        requests; whether the device made it."""
        side = max(int(preprocess["resize_size"]), int(preprocess["crop_size"]))
        size = (side + side // 3, side)  # 4:3, its shorter side the resize's: neither draft mode nor a boxed resize
        out = io.BytesIO()
        Image.new("RGB", size, (120, 130, 140)).save(out, "JPEG", quality=90)
        with Image.open(io.BytesIO(out.getvalue())) as image:
            if not self.takes(image, preprocess):
                return False
        return self.pixels(out.getvalue(), size, preprocess) is not None

    def pixels(self, data: bytes, size: tuple[int, int], preprocess: dict[str, Any]) -> np.ndarray | OrtValue | None:
        """uint8 [crop, crop, 3] of a JPEG `takes` accepted (on the host, or where it was made if `keep`), or None where
        the decoder could not read it or the device failed (the image then takes the host path)."""
        try:
            return self._made(data, size, preprocess)
        except Exception as e:  # out of memory, a CUDA or decoder fault: Pillow's answer for the image beats a 500
            self._gave_up(e)
            return None

    def _decoded(self, data: bytes) -> Any:
        """nvImageCodec's image of `data` (None where it cannot decode it), decoded in one call with the images other
        threads brought meanwhile: one thread decodes a batch at a time, and the first waiting thread to find no batch
        decoding decodes everything waiting by then; the others wait for their own image."""
        mine = _Waiting(data)
        with self.turn:
            self.waiting.append(mine)
            while not mine.done:
                if self.leading:
                    self.turn.wait()
                    continue
                self.leading, batch, self.waiting = True, self.waiting, []
                images: list[Any] = [None] * len(batch)
                error: BaseException | None = RuntimeError("the decoding thread stopped")
                self.turn.release()
                try:
                    images, error = list(self.decoder.decode([w.data for w in batch], cuda_stream=self.stream)), None
                except Exception as e:  # every image of the batch fails as this call did
                    error = e
                finally:
                    self.turn.acquire()
                    for waiting, image in zip(batch, images):
                        waiting.image, waiting.error, waiting.done = image, error, True
                    self.leading = False
                    self.turn.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.image

    def _made(self, data: bytes, size: tuple[int, int], preprocess: dict[str, Any]) -> np.ndarray | OrtValue | None:
        decoded = self._decoded(data)
        if decoded is None or tuple(decoded.shape) != (size[1], size[0], 3):
            return None
        plan = self._weights(size, preprocess)
        binding = self.sessions[plan.vertical_first].io_binding()
        if self.where == "cpu":
            host = np.ascontiguousarray(decoded.cpu())
            binding.bind_input("pixels", "cpu", 0, np.uint8, list(host.shape), host.ctypes.data)
        else:
            interface = decoded.__cuda_array_interface__
            # the graph reads rows packed one after another: a pitched buffer (rows padded) goes to Pillow instead
            if interface.get("strides") not in (None, (size[0] * 3, 3, 1)):
                return None
            address = interface["data"][0]
            binding.bind_input("pixels", "cuda", self.device_id, np.uint8, [size[1], size[0], 3], address)
        binding.bind_ortvalue_input("rows", plan.rows)
        binding.bind_ortvalue_input("cols", plan.cols_t)
        binding.bind_output("crop", self.where if self.keep else "cpu", self.device_id or 0)
        self.sessions[plan.vertical_first].run_with_iobinding(binding)
        return binding.get_outputs()[0] if self.keep else binding.copy_outputs_to_cpu()[0]

    def _gave_up(self, error: Exception) -> None:
        """Logs a device failure: the first at once, then at most a line a minute counting those since, so images that
        fail here (a client's, or a GPU out of memory) cannot flood the log."""
        with self.lock:
            self.failures += 1
            now = time.monotonic()
            if now - self.logged < FAILURE_LOG_S:
                return
            count, self.failures, self.logged = self.failures, 0, now
        reason = (str(error).splitlines() or [""])[0][:300]
        logger.warning("gpu preprocessing failed on %d image(s) (%s: %s); Pillow decoded them instead", count,
                       type(error).__name__, reason)  # fmt: skip

    def _weights(self, size: tuple[int, int], preprocess: dict[str, Any]) -> _Weights:
        """The resize's weights for one image size, made once and kept on the device: making them costs 0.23 ms of
        host CPU (500x375 to 224 px), sending them 1.5 MB (float64 [224, 375] and [500, 224]) if bound from the host
        each call, and uploads come in few sizes (a camera's, a client's resize). The least recently used go first
        once they hold over `weights_bytes`."""
        key = (size, int(preprocess["resize_size"]), int(preprocess["crop_size"]), str(preprocess["interpolation"]))
        with self.lock:
            held = self.weights.get(key)
            if held is not None:
                self.weights.move_to_end(key)
                return held
        import onnxruntime as ort

        plan = resample.plan(*size, preprocess)
        assert plan is not None  # `takes` left the boxed resize to the host
        rows, cols_t = plan.rows, np.ascontiguousarray(plan.cols.T)
        made = _Weights(
            ort.OrtValue.ortvalue_from_numpy(rows, self.where, self.device_id or 0),
            ort.OrtValue.ortvalue_from_numpy(cols_t, self.where, self.device_id or 0),
            plan.vertical_first,
            rows.nbytes + cols_t.nbytes,
        )
        with self.lock:
            self.weights[key] = made
            while len(self.weights) > 1 and sum(w.nbytes for w in self.weights.values()) > self.weights_bytes:
                self.weights.popitem(last=False)
        return made


class _Waiting:
    """An image waiting for its decode: its bytes, then nvImageCodec's image of it (or None) or the call's error."""

    __slots__ = ("data", "done", "error", "image")

    def __init__(self, data: bytes) -> None:
        self.data, self.done, self.error, self.image = data, False, None, None


class _Weights(t.NamedTuple):
    rows: OrtValue  # float64 [crop, height]
    cols_t: OrtValue  # float64 [width, crop]
    vertical_first: bool
    nbytes: int


@functools.cache
def cuda_runtime() -> ctypes.CDLL:
    """The CUDA runtime ONNX Runtime's CUDA provider runs on (CUDA 13, from onnxruntime-gpu's nvidia-* wheels, or the
    system's), through ctypes: loaded first as the sessions load it, so both use the one library."""
    from service.runtime import preload_cuda_libraries

    preload_cuda_libraries()
    return ctypes.CDLL("libcudart.so.13")


def cuda_stream(device_id: int) -> int:
    """A CUDA stream on `device_id`, as the integer handle nvImageCodec and ONNX Runtime's `user_compute_stream`
    take."""
    runtime = cuda_runtime()
    if runtime.cudaSetDevice(ctypes.c_int(device_id)):
        raise RuntimeError(f"cudaSetDevice({device_id}) failed")
    stream = ctypes.c_void_p()
    if runtime.cudaStreamCreateWithFlags(ctypes.byref(stream), ctypes.c_uint(1)):  # 1: cudaStreamNonBlocking
        raise RuntimeError(f"cudaStreamCreateWithFlags failed on GPU {device_id}")
    return int(stream.value or 0)
