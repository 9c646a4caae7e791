"""The decoding budget (service/budget.py) and what decoding costs (service/decode.py, core/preprocess.py): real
image files, real Pillow decoding, the real budget on a real event loop."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from core.images import to_rgb
from core.preprocess import BOX_OVER_CROPS, boxed
from service.budget import Budget
from service.config import Limits
from service.decode import decode, decode_within
from service.errors import InputError
from tests.oracles import eval_crop

DIGITS = {"resize_size": 32, "crop_size": 32, "interpolation": "bilinear"}


def _file(array: np.ndarray, format: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format, **options)
    return out.getvalue()


def _whole(image: Image.Image, preprocess: dict) -> np.ndarray:
    """Training's geometry done the plain way, with Pillow and no product code: the whole image resized, then the
    centre cropped (tests/oracles.py)."""
    return eval_crop(image, preprocess["resize_size"], preprocess["crop_size"], preprocess["interpolation"])


def decoding_cost(data: bytes) -> int:
    """What the service's budget is asked for before decoding `data` for the digits model (nothing is decoded)."""
    return decode_within(data, 0, Limits(), DIGITS, lambda cost: False)


def test_a_thin_image_costs_little_and_gives_nearly_the_pixels_of_the_whole_resize():
    rng = np.random.default_rng(0)
    row = rng.integers(0, 256, (1, 20_000, 3), dtype=np.uint8)
    data = _file(row)
    # resized whole it would be 640,000 x 32 pixels (61 MB); only the crop's region is resized
    assert decoding_cost(data) < 1_000_000
    pixels = decode(data, 0, Limits(), DIGITS)
    reference = _whole(Image.fromarray(row), DIGITS)
    assert pixels.shape == (32, 32, 3) and np.abs(pixels.astype(int) - reference).max() <= 2
    # photos are resized whole, as training does: pixel for pixel the same
    assert not boxed(4000, 3000, DIGITS) and not boxed(64 * BOX_OVER_CROPS, 64, DIGITS)
    assert boxed(64 * BOX_OVER_CROPS + 2, 64, DIGITS) and boxed(1, 200_000, DIGITS)


def test_sixteen_bit_images_are_scaled_in_integers_as_the_float_formula_did():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.clip(values * (255.0 / 65535.0), 0, 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values)))[..., 0], expected)
    wide = np.array([[-5, 0, 300, 65535, 70000]], dtype=np.int32)  # a 32-bit "I" image with values past 8 bits
    expected = np.clip(wide * (255.0 / 65535.0), 0, 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(wide)))[..., 0], expected)


def test_large_jpegs_decode_in_draft_mode_small_ones_exactly():
    smooth = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    large = np.asarray(Image.fromarray(smooth).resize((2400, 1800), Image.Resampling.BICUBIC))
    data = _file(large, "JPEG", quality=90)
    full = _whole(Image.open(io.BytesIO(data)).convert("RGB"), DIGITS)
    drafted = decode(data, 0, Limits(), DIGITS)
    assert np.abs(drafted.astype(int) - full).max() <= 2
    # the cost is that of the 1/8-scale decode (300 x 225), not of 2400 x 1800
    assert decoding_cost(data) < 2400 * 1800
    small = _file(large[:200, :250], "JPEG", quality=90)  # shorter side 200 < 2 x 4 x 32: no draft
    assert np.array_equal(
        decode(small, 0, Limits(), DIGITS), _whole(Image.open(io.BytesIO(small)).convert("RGB"), DIGITS)
    )


def test_the_budget_refuses_what_never_fits_and_makes_the_rest_wait():
    async def scenario() -> None:
        budget = Budget(1000, wait_ms=50)
        with pytest.raises(InputError, match="image 0 needs 1001 bytes to decode") as never:
            await budget.wait_to_take(1001, "image 0")
        assert never.value.status == 413
        assert budget.take(800)
        with pytest.raises(InputError, match="busy: image 1 needs 300 bytes") as busy:
            await budget.wait_to_take(300, "image 1")
        assert busy.value.status == 503
        # given back from another thread (as a decoding thread does): the waiting image goes ahead
        budget.wait_s = 30
        waiting = asyncio.ensure_future(budget.wait_to_take(300, "image 2"))
        await asyncio.sleep(0)
        assert not waiting.done()
        threading.Thread(target=budget.give_back, args=(800,)).start()
        await asyncio.wait_for(waiting, 30)
        assert budget.used == 300

    asyncio.run(scenario())


async def settled() -> None:
    """The event loop's pending callbacks run (a waiter joins its line, `give_back`'s admission): whatever the clock,
    nothing else can move after them in these single-loop tests."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_waiting_images_go_in_the_order_they_came_and_a_small_one_passes_a_large_one():
    async def scenario() -> list[str]:
        budget = Budget(1000, wait_ms=30_000)
        assert budget.take(900)
        order: list[str] = []

        async def wait(cost: int, part: str) -> None:
            await budget.wait_to_take(cost, part)
            order.append(part)

        waiting = [asyncio.ensure_future(wait(cost, part)) for cost, part in ((600, "a"), (600, "b"), (200, "c"))]
        await settled()
        assert order == []
        budget.give_back(500)  # 600 free: room for a, or for c, not for b after a
        await asyncio.wait_for(waiting[0], 5)
        await settled()
        assert order == ["a"], order
        budget.give_back(400)  # 1000 - 600 held by a: c fits, b does not
        await asyncio.wait_for(waiting[2], 5)
        await settled()
        assert order == ["a", "c"], order
        budget.give_back(600)
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert budget.used == 800  # b and c
        return order

    assert asyncio.run(scenario()) == ["a", "c", "b"]


def test_a_line_that_moves_waits_past_decode_wait_ms_and_a_stuck_one_is_refused():
    """decode_wait_ms bounds the time without progress, not the time in line: a request of many large images on an
    idle worker is answered however long its line (issue 31: one request of 64 x 40 MP PNGs was refused as busy)."""

    async def scenario() -> None:
        budget = Budget(1000, wait_ms=400)
        assert budget.take(1000)
        line = [asyncio.ensure_future(budget.wait_to_take(1000, f"image {i}")) for i in range(6)]
        # each image is let in 150 ms after the one before (250 ms inside the bound, for a slow machine's turns):
        # the line takes 900 ms in all, over twice the bound
        for held in range(6):
            await asyncio.sleep(0.15)
            budget.give_back(1000)
            await asyncio.wait_for(line[held], 5)
        assert budget.used == 1000
        # nothing given back for 400 ms: refused as busy, and it holds nothing
        with pytest.raises(InputError, match="gave nothing back for 0.4 s") as busy:
            await budget.wait_to_take(10, "image 6")
        assert busy.value.status == 503
        budget.give_back(1000)
        assert budget.used == 0

    asyncio.run(scenario())


def test_an_image_that_gives_up_waiting_holds_nothing():
    async def scenario() -> None:
        budget = Budget(1000, wait_ms=30_000)
        assert budget.take(1000)
        waiting = asyncio.ensure_future(budget.wait_to_take(500, "image 0"))
        await settled()  # in line
        assert not waiting.done()
        waiting.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        budget.give_back(1000)
        await settled()  # the admission give_back asked for has run
        assert budget.used == 0

    asyncio.run(scenario())
