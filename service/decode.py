"""Uploaded bytes -> the uint8 pixels a graph takes, or an InputError that names the image and the problem.

The client's content type is never trusted: the format is sniffed from the bytes. Size and pixel
limits are checked before decoding, so a decompression bomb is refused from its header alone.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import typing as t
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.images import to_rgb
from core.preprocess import boxed, draft_request, prepare, resized_size
from service.config import Limits
from service.errors import InputError

if t.TYPE_CHECKING:
    from onnxruntime import OrtValue

    from service.device_pixels import DevicePixels

logger = logging.getLogger("service")
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO")


# A client's value as an error message quotes it: a model or ensemble name, a voting rule, a field name or
# value, a content type. Quoted whole, a 900 KB `model` field came back in a 900,070-byte 404 body (and log line).
LIMIT = 64  # characters of a value kept: enough to recognise a misspelt name


def quoted(value: t.Any, limit: int = LIMIT) -> str:
    """repr(value) (so a newline in it cannot start a log line of its own), cut to `limit` characters and
    marked as cut: 'digits-resnet1' stays as it is; a 900,000-character name becomes 'xxxx...' (900002 characters)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listed(values: t.Iterable[t.Any], most: int = 5) -> str:
    """The first `most` values, `quoted` and joined, and how many more there were."""
    values = list(values)
    shown = ", ".join(quoted(v) for v in values[:most])
    return shown if len(values) <= most else f"{shown} and {len(values) - most} more"


def decoder_ready() -> int:
    """Called once in each decoding process at start-up, so that it has imported this module (and PIL)
    before the first request; returns the process id."""
    return os.getpid()


# bytes a pixel takes in each mode PIL decodes to ("1" is stored a byte a pixel)
MODE_BYTES = {
    **dict.fromkeys(("1", "L", "P"), 1),
    **dict.fromkeys(("LA", "PA", "La", "I;16", "I;16B", "I;16L", "I;16N"), 2),
    **dict.fromkeys(("RGB", "YCbCr", "LAB", "HSV"), 3),
    **dict.fromkeys(("RGBA", "RGBa", "RGBX", "CMYK", "I", "F"), 4),
}


def _opened(
    data: bytes | t.BinaryIO, part: str, limits: Limits, preprocess: dict[str, Any], device: DevicePixels | None = None
) -> Image.Image:
    """The image in `data` (its bytes, or a file at its start), its header read and checked, in JPEG's draft mode
    where the answer allows (core/preprocess.py, `draft_request`): nothing is decoded yet. One that `device` takes
    (service/device_pixels.py) is marked `on_device` and left at its full size, which is what that decoder gives."""
    # a spooled upload's size by seeking: its fileno() would roll one held in memory over to disk
    size = len(data) if isinstance(data, bytes) else data.seek(0, 2)
    if not isinstance(data, bytes):
        data.seek(0)
    if not size:
        raise InputError(400, f"{part} is empty")
    if size > limits.max_image_bytes:
        raise InputError(413, f"{part} is {size} bytes; the limit is {limits.max_image_bytes}")
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError as e:
        raise InputError(413, f"{part} is too large to decode: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(
            415, f"{part} is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})"
        ) from None
    if image.format not in SUPPORTED_FORMATS:
        image.close()
        raise InputError(415, f"{part} is {image.format}, not a supported format ({', '.join(SUPPORTED_FORMATS)})")
    width, height = image.size
    if width * height > limits.max_image_pixels:
        image.close()
        raise InputError(
            413, f"{part} is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}"
        )
    image.on_device = device is not None and device.takes(image, preprocess)  # type: ignore[attr-defined]
    request = draft_request(width, height, int(preprocess["resize_size"]))
    if request is not None and image.format in ("JPEG", "MPO") and not image.on_device:  # type: ignore[attr-defined]
        image.draft("RGB", request)
    return image


def cost_of(image: Image.Image, preprocess: dict[str, Any]) -> int:
    """The most bytes decoding `image` holds at once, from its header: the decoded pixels, the copies that
    converting them to 8-bit RGB makes, and the resized image `prepare` makes before cropping."""
    width, height = image.size
    pixels = width * height
    decoded = MODE_BYTES.get(image.mode, 4)
    # 16-bit: a 4-byte working copy and the 8-bit result (core/images.py); other modes: the RGB conversion and,
    # for a rotated JPEG, the rotated copy
    converting = 5 if image.mode.startswith("I") else decoded
    w, h = resized_size(width, height, int(preprocess["resize_size"]))
    crop = int(preprocess["crop_size"])
    box = boxed(width, height, preprocess)
    resized = crop * crop if box else max(w, crop) * max(h, crop)
    # Pillow resizes in two passes: the first keeps every source row (or the box's rows)
    first_pass = (crop if box else w) * height
    # Pillow's WebP plugin has libwebp decode into a buffer of its own, then copies it into the image
    buffered = 4 if image.format == "WEBP" else 0
    return pixels * (decoded + converting + 3 + buffered) + 3 * (resized + first_pass)


def decode(
    data: bytes, index: int | str, limits: Limits, preprocess: dict[str, Any], device: DevicePixels | None = None
) -> np.ndarray | OrtValue:
    """One upload (the `index`-th of its request, or a file's name) -> uint8 [crop, crop, 3] under the
    model's own eval resize + center crop; on `device` where it takes the image (service/device_pixels.py: an
    OrtValue there if it keeps its crops)."""
    part = f"image {index}"
    with _opened(data, part, limits, preprocess, device) as image:
        return _made(image, data, part, preprocess, device)


def decode_within(
    data: bytes,
    index: int | str,
    limits: Limits,
    preprocess: dict[str, Any],
    take: t.Callable[[int], bool],
    device: DevicePixels | None = None,
) -> np.ndarray | OrtValue | int:
    """`decode`, with the header read once: its pixels if `take(cost)` (the decoding budget) grants what decoding
    it costs, else that cost, for the caller to wait for and decode the image later."""
    part = f"image {index}"
    with _opened(data, part, limits, preprocess, device) as image:
        cost = cost_of(image, preprocess)
        if not take(cost):
            return cost
        return _made(image, data, part, preprocess, device)


def _made(
    image: Image.Image, data: bytes, part: str, preprocess: dict[str, Any], device: DevicePixels | None
) -> np.ndarray | OrtValue:
    """The pixels, from `device` where `_opened` marked the image for it, else (or where its decoder gave up: Pillow
    then decodes the image, or refuses it with the reason) Pillow's."""
    if device is not None and getattr(image, "on_device", False):
        made = device.pixels(data, image.size, preprocess)
        if made is not None:
            return made
    return _decoded(image, part, preprocess)


def header_cost(file: t.BinaryIO, index: int | str, limits: Limits, preprocess: dict[str, Any]) -> int:
    """`cost_of` the image in `file` (from its start), from its header alone: what decoding it would cost, known
    before its bytes are read into memory; an InputError for a file `decode` would refuse from its header."""
    with _opened(file, f"image {index}", limits, preprocess) as image:
        return cost_of(image, preprocess)


def _decoded(image: Image.Image, part: str, preprocess: dict[str, Any]) -> np.ndarray:
    try:
        image.load()
        rgb = to_rgb(image)
    except Image.DecompressionBombError as e:
        raise InputError(413, f"{part} is too large to decode: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(400, f"{part} is truncated or corrupt: {e}") from None
    return prepare(rgb, preprocess)


def decoding_processes(processes: int) -> ProcessPoolExecutor | None:
    """A pool of `processes` decoding processes, all started now, or None: `service.predict`'s, which sends them files
    by the chunk (a serving worker sends one image at a time, to service/decoders.py's processes).

    Spawned, not forked: the serving process already runs threads (the event loop's, ONNX Runtime's),
    and a fork copies their locks in whatever state they are."""
    if not processes:
        return None
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    for future in [pool.submit(decoder_ready) for _ in range(processes)]:
        future.result()
    logger.info("decoding in %d processes", processes)
    return pool
