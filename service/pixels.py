"""A request's images -> the pixels a graph takes, each image decoded within the worker's budget (service/budget.py),
which counts the image's own bytes beside its decoded pixels and their intermediates.

Each image is read and its header checked in a thread; where the budget has room at once it is decoded in that same
thread (one hop off the event loop an image, as before the budget existed). Otherwise the event loop waits for room
and then decodes it, in a thread or in a decoding process (`decoding.processes`).

A large image (decoding it costs over LARGE_BYTES: 7 megapixels and up, a photo's JPEG at a graph's size far below)
is decoded in threads of their own, at a lower CPU priority (`LARGE_NICE`): an ordinary request's decoding and the
event loop come first, so a client that sends 40-megapixel images slows the ordinary requests beside it less.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile

from core.cores import usable_cores
from service.budget import Budget
from service.config import Limits
from service.decode import decode, decode_within, header_cost
from service.errors import InputError

if t.TYPE_CHECKING:
    from onnxruntime import OrtValue

    from service.decoders import DecodingProcesses
    from service.device_pixels import DevicePixels

# an image as a request carries it: a raw body, or a multipart part (held in memory, or spooled to disk when large)
Image = bytes | UploadFile
LARGE_BYTES = 64 * 2**20
# the nice value of the threads that decode large images: on Linux a thread's own (setpriority on its thread id);
# 10 weighs a tenth of 0 in the kernel's scheduler, so a busy core still gives an ordinary request most of its time
LARGE_NICE = 10
_large: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # not permitted (a seccomp profile): the thread keeps the worker's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LARGE_NICE)


def large_decoding() -> ThreadPoolExecutor:
    """The threads that decode large images, made at the first."""
    global _large
    if _large is None:
        _large = ThreadPoolExecutor(max(2, usable_cores()), "decode-large", initializer=_lower_priority)
    return _large


def read_size(image: Image, index: int, max_bytes: int) -> int:
    """The image's size in bytes, refused (413) over `max_bytes` before it is read into memory."""
    size = len(image) if isinstance(image, bytes) else image.size if image.size is not None else image.file.seek(0, 2)
    if size > max_bytes:
        raise InputError(413, f"image {index} is {size} bytes; the limit is {max_bytes}")
    return size


def read(image: Image, index: int, max_bytes: int) -> bytes:
    """The image's bytes: a raw body as it is, a multipart part refused by its size before it is read into memory.
    Blocking (a part over Starlette's spooling threshold is on disk): call it off the event loop."""
    read_size(image, index, max_bytes)
    if isinstance(image, bytes):
        return image
    image.file.seek(0)
    return image.file.read()


async def pixels(
    images: t.Sequence[Image],
    preprocess: dict[str, Any],
    limits: Limits,
    budget: Budget,
    decoder: DecodingProcesses | None,
    device: DevicePixels | None = None,
) -> list[np.ndarray | OrtValue]:
    """uint8 [crop, crop, 3] per image, in order; an InputError for the first image refused. `device`: where the
    images it takes are decoded and resized (service/device_pixels.py), in the same threads and budget (their crops
    OrtValues where it made them, if it keeps them)."""

    def here(cost: int, part: str) -> bool:
        """Whether the thread that read an image's header decodes it now: not where decoding processes do it, nor a
        large image (its own threads do), and only if the budget holds its cost at once; 413 if it never would."""
        budget.check(cost, part)
        return decoder is None and cost <= LARGE_BYTES and budget.take(cost)

    def first(i: int, upload: Image) -> np.ndarray | OrtValue | int:
        """The pixels, where this thread may decode them now; else the cost of decoding them (from the header, the
        image's own bytes counted), for the event loop to wait for."""
        if not isinstance(upload, bytes):
            return spooled(i, upload)
        taken = 0

        def take(cost: int) -> bool:
            nonlocal taken
            cost += len(upload)  # held while it decodes
            if not here(cost, f"image {i}"):
                return False
            taken = cost
            return True

        try:
            got = decode_within(read(upload, i, limits.max_image_bytes), i, limits, preprocess, take, device)
        finally:
            if taken:
                budget.give_back(taken)
        return got + len(upload) if isinstance(got, int) else got

    def spooled(i: int, upload: UploadFile) -> np.ndarray | OrtValue | int:
        """A part of a large multipart body, in Starlette's spooled file: its cost from its header alone, its bytes
        read only once the budget holds them. Parts waiting with their bytes took a worker 1.2 GB past its budget
        (issue 31); parts read whole to find their cost held the threads that decode ordinary requests' images a few
        ms apiece, 192 of them for three requests of 64 x 10 MB images (bench/README.md, 'Attacks')."""
        size = read_size(upload, i, limits.max_image_bytes)
        cost = header_cost(upload.file, i, limits, preprocess) + size
        return held(i, upload, cost) if here(cost, f"image {i}") else cost

    def held(i: int, upload: Image, cost: int) -> np.ndarray | OrtValue:
        """Decode an image whose cost the budget holds, and give it back, in this thread: its bytes are the call's
        alone, gone by then, and the memory trim after a large image (service/budget.py) does not stop the event
        loop (on it, the trims after 40 MP images were 4% of the loop's time under three requests of 64 of them)."""
        try:
            return decode(read(upload, i, limits.max_image_bytes), i, limits, preprocess, device)
        finally:
            budget.give_back(cost)

    async def one(i: int, upload: Image) -> np.ndarray | OrtValue:
        cost = await asyncio.to_thread(first, i, upload)
        if not isinstance(cost, int):  # the pixels, made in that thread
            return cost
        await budget.wait_to_take(cost, f"image {i}")
        if decoder is None:
            loop = asyncio.get_running_loop()
            threads = large_decoding() if cost > LARGE_BYTES else None  # None: the loop's own
            # shielded: a request that goes away leaves the thread to finish and give the budget back itself
            return await asyncio.shield(loop.run_in_executor(threads, held, i, upload, cost))
        try:
            # a part spooled to disk is read in a thread; bytes are already in memory
            data = (
                upload
                if isinstance(upload, bytes)
                else await asyncio.to_thread(read, upload, i, limits.max_image_bytes)
            )
            return await decoder.decode(data, i, preprocess)
        finally:
            data = b""  # the bytes go before the budget they were counted in is given back
            budget.give_back(cost, trim=False)

    # PIL releases the GIL while decoding and resizing, but not around the rest of the Python work per
    # image: threads off the event loop use a few cores, not every core (hence decoding.processes)
    # every image's work ends before the request does, a refused one's too: the budget it held is back before the
    # answer, and the refusal names the first image at fault, whichever thread finished first
    decoded = await asyncio.gather(*(one(i, upload) for i, upload in enumerate(images)), return_exceptions=True)
    for result in decoded:
        if isinstance(result, BaseException):
            raise result
    return t.cast("list[np.ndarray | OrtValue]", decoded)
