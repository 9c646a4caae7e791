"""service/decoders.py: a serving worker's decoding processes give each image the pixels and the refusal a decoding
thread gives it, through the host backend and its budget, and a process that dies fails only what it held."""

from __future__ import annotations

import asyncio
import io
import os
import signal

import numpy as np
import pytest
from PIL import Image

from service.budget import Budget
from service.config import Limits
from service.decode import decode
from service.decoders import DecodingProcesses
from service.errors import InputError
from service.preprocessing import Host

PREPROCESS = {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear"}
SMALL = {"resize_size": 36, "crop_size": 32, "interpolation": "bicubic"}


def _encoded(size: tuple[int, int], seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module, as a worker has: the processes serve the loop that first used them."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def decoders():
    processes = DecodingProcesses(2, Limits())
    yield processes
    processes.shutdown()


def test_each_image_gets_the_pixels_a_thread_gives_it(decoders, loop):
    images = [_encoded((500, 375), 0), _encoded((300, 451), 1, "PNG"), _encoded((97, 130), 2, mode="L"),
              _encoded((640, 480), 3, "WEBP"), _encoded((1600, 1200), 4)]  # fmt: skip

    async def both() -> list[np.ndarray]:
        return await asyncio.gather(*(decoders.decode(data, i, p) for p in (PREPROCESS, SMALL)
                                      for i, data in enumerate(images)))  # fmt: skip

    got = loop.run(both())
    expected = [decode(data, i, Limits(), p) for p in (PREPROCESS, SMALL) for i, data in enumerate(images)]
    assert all(g.dtype == np.uint8 and np.array_equal(g, e) for g, e in zip(got, expected, strict=True))


def test_a_refusal_is_the_threads_refusal(decoders, loop):
    cut = _encoded((500, 375), 5)[:3000]
    for data, status in ((cut, 400), (b"not an image at all", 415)):
        with pytest.raises(InputError) as thread:
            decode(data, 3, Limits(), PREPROCESS)
        with pytest.raises(InputError) as process:
            loop.run(decoders.decode(data, 3, PREPROCESS))
        assert (process.value.status, process.value.message) == (thread.value.status, thread.value.message)
        assert process.value.status == status and "image 3" in process.value.message


def test_the_host_backend_batches_through_them_within_its_budget(decoders, loop):
    limits = Limits()
    images = [_encoded((500, 375), 6), _encoded((200, 300), 7, "PNG")]

    async def batch(backend: Host, budget: Budget) -> np.ndarray:
        return await backend.batch(images, PREPROCESS, limits, budget)

    budget = Budget(limits.decode_budget_bytes, 1000)
    assert np.array_equal(loop.run(batch(Host(decoders), budget)), loop.run(batch(Host(), budget)))
    assert budget.used == 0  # every image's cost given back


def test_a_process_that_dies_fails_what_it_held_and_the_next_image_is_decoded():
    decoders = DecodingProcesses(1, Limits())
    try:
        data = _encoded((500, 375), 8)

        async def killed_then_again() -> tuple[BaseException, np.ndarray]:
            await decoders.decode(data, 0, PREPROCESS)  # the process is attached to this loop
            pending = asyncio.ensure_future(decoders.decode(_encoded((4000, 3000), 9), 0, PREPROCESS))
            for _ in range(10_000):  # until its frame is written: it is then decoding a 12-megapixel image
                if decoders.links[0].pending:
                    break
                await asyncio.sleep(0)
            assert decoders.links[0].pending, "the image never went to the process"
            os.kill(decoders.links[0].process.pid, signal.SIGKILL)
            with pytest.raises(RuntimeError) as failed:
                await pending
            return failed.value, await decoders.decode(data, 1, PREPROCESS)

        failed, again = asyncio.run(killed_then_again())
        assert "decoding process" in str(failed) and "ended" in str(failed), failed
        assert np.array_equal(again, decode(data, 1, Limits(), PREPROCESS))
        with pytest.raises(RuntimeError, match="serve the event loop that first used them"):
            asyncio.run(decoders.decode(data, 2, PREPROCESS))  # another loop: refused, not left waiting
    finally:
        decoders.shutdown()
