"""core/resample.py's matrix products against core/preprocess.py's Pillow path: equal bit for bit on real photos and
random pixels, many sizes odd and even, both orientations, both interpolations, upscales and downscales small and
large, a crop larger than the resized image; and the cases it leaves to the host path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from core import resample
from core.preprocess import boxed, draft_request, prepare

skimage_data = pytest.importorskip("skimage.data")

# (resize_size, crop_size): the digits model's, ImageNet's, odd gaps, and a crop larger than the resize (zero padding)
PREPROCESS = [(32, 32), (40, 32), (36, 33), (232, 224), (256, 224), (24, 32)]
# width x height, each also turned: small (upscaled), odd and even, photo-like, long and thin, large downscales
SIZES = [(1, 1), (3, 2), (7, 31), (31, 32), (32, 32), (33, 64), (41, 100), (65, 223), (224, 225), (257, 256),
         (300, 900), (375, 500), (451, 300), (481, 640), (512, 512), (600, 400), (640, 97)]  # fmt: skip


def photos() -> list[np.ndarray]:
    return [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]


def _expected(pixels: np.ndarray, preprocess: dict) -> np.ndarray:
    return prepare(Image.fromarray(pixels, "RGB"), preprocess)


def _settings(resize: int, crop: int, interpolation: str) -> dict:
    return {"resize_size": resize, "crop_size": crop, "interpolation": interpolation}


def _check(pixels: np.ndarray, preprocess: dict) -> None:
    height, width = pixels.shape[:2]
    plan = resample.plan(width, height, preprocess)
    if plan is None:
        assert boxed(width, height, preprocess), (width, height, preprocess)
        return
    got, expected = resample.apply(plan, pixels), _expected(pixels, preprocess)
    assert got.dtype == np.uint8 and got.shape == expected.shape, (width, height, preprocess, got.shape)
    differ = int((got != expected).sum())
    assert differ == 0, f"{width}x{height} {preprocess}: {differ} of {got.size} values differ"


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_random_pixels_are_pillows_on_many_sizes_both_ways(interpolation):
    """Noise makes bicubic overshoot 0..255 in both passes, so the per-pass clipping is exercised too."""
    rng = np.random.default_rng(0)
    for (width, height), (resize, crop) in itertools.product(SIZES, PREPROCESS):
        if resize >= 200 and width * height > 300 * 900:  # keep the large models to the photo-sized images below
            continue
        for w, h in {(width, height), (height, width)}:
            _check(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), _settings(resize, crop, interpolation))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_real_photos_are_pillows_cut_to_many_sizes(interpolation):
    """Regions of skimage's photos (astronaut, chelsea, coffee, rocket) of many sizes, both orientations, resized
    for a small and an ImageNet-sized model: smooth areas and edges, where a rounding slip would show."""
    rng = np.random.default_rng(1)
    for photo in photos():
        for _ in range(6):
            height = int(rng.integers(1, photo.shape[0] + 1))
            width = int(rng.integers(1, photo.shape[1] + 1))
            y, x = int(rng.integers(0, photo.shape[0] - height + 1)), int(rng.integers(0, photo.shape[1] - width + 1))
            region = np.ascontiguousarray(photo[y : y + height, x : x + width])
            for resize, crop in [(32, 32), (256, 224), (36, 33)]:
                _check(region, _settings(resize, crop, interpolation))
                _check(np.ascontiguousarray(region.transpose(1, 0, 2)), _settings(resize, crop, interpolation))
        _check(photo, _settings(232, 224, interpolation))  # each whole photo too


def test_both_pass_orders_are_pillows():
    """Pillow 13 runs the vertical pass first where the height loses over twice the rows the width loses columns (tall
    images shrunk), else the horizontal; each pass rounds to uint8, so the wrong order differs in many values.
    Shapes on both sides of the rule, and just at it."""
    rng = np.random.default_rng(2)
    orders = set()
    for width, height in [(100, 250), (120, 500), (97, 400), (300, 601), (20, 41), (20, 40), (30, 61), (30, 60)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for interpolation, resize in itertools.product(("bilinear", "bicubic"), (10, 16, 32)):
            for turned in (pixels, np.ascontiguousarray(pixels.transpose(1, 0, 2))):
                settings = _settings(resize, min(resize, 16), interpolation)
                _check(turned, settings)
                plan = resample.plan(turned.shape[1], turned.shape[0], settings)
                orders |= set() if plan is None else {plan.vertical_first}
    assert orders == {True, False}
    assert resample.vertical_first(20, 41, 10, 20) and not resample.vertical_first(20, 40, 10, 20)
    assert not resample.vertical_first(41, 20, 20, 10) and not resample.vertical_first(20, 41, 32, 65)


def test_the_weights_are_integers_summing_to_about_one():
    for interpolation, (n_in, n_out) in itertools.product(["bilinear", "bicubic"], [(500, 256), (7, 256), (640, 33)]):
        w = resample.weights(n_in, n_out, interpolation)
        assert w.shape == (n_out, n_in) and np.array_equal(w, np.round(w))
        assert np.abs(w.sum(1) - resample.ONE).max() <= w.shape[1]  # each weight rounded by at most a half


def test_what_stays_on_the_host_path():
    bilinear = _settings(32, 32, "bilinear")
    assert resample.plan(500, 375, _settings(32, 32, "nearest")) is None
    assert resample.host_only(500, 375, _settings(32, 32, "nearest"))
    assert boxed(20_000, 10, bilinear) and resample.plan(20_000, 10, bilinear) is None
    assert draft_request(500, 375, 32) is not None and resample.host_only(500, 375, bilinear)  # a JPEG draft
    assert not resample.host_only(500, 375, _settings(256, 224, "bilinear"))


@pytest.fixture(scope="module")
def sessions():
    ort = pytest.importorskip("onnxruntime")
    return {order: ort.InferenceSession(resample.graph(order), providers=["CPUExecutionProvider"])
            for order in (True, False)}  # fmt: skip


def _graph_check(sessions, pixels: np.ndarray, preprocess: dict) -> bool:
    """The graph's crop of `pixels` is Pillow's; False where the plan leaves the image to the host path."""
    height, width = pixels.shape[:2]
    plan = resample.plan(width, height, preprocess)
    if plan is None:
        return False
    feeds = {"pixels": pixels, "rows": plan.rows, "cols": np.ascontiguousarray(plan.cols.T)}
    [got] = sessions[plan.vertical_first].run(None, feeds)
    expected = _expected(pixels, preprocess)
    assert got.dtype == np.uint8 and got.shape == expected.shape, (width, height, preprocess, got.shape)
    differ = int((got != expected).sum())
    assert differ == 0, f"graph, {width}x{height} {preprocess}: {differ} of {got.size} values differ"
    return True


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_onnx_graph_is_pillows_on_many_sizes_both_ways(sessions, interpolation):
    """resample.graph, the two passes a GPU runs (ONNX Runtime's CPU provider here), against Pillow: random pixels
    (bicubic overshoot clipped in each pass) and photo regions, many sizes in both orientations, both pass orders,
    a crop larger than the resized image."""
    rng = np.random.default_rng(3)
    orders = set()
    for (width, height), (resize, crop) in itertools.product(SIZES, [(32, 32), (36, 33), (256, 224), (24, 32)]):
        if resize >= 200 and width * height > 300 * 900:
            continue
        for w, h in {(width, height), (height, width)}:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if _graph_check(sessions, pixels, _settings(resize, crop, interpolation)):
                orders.add(resample.plan(w, h, _settings(resize, crop, interpolation)).vertical_first)
    for photo in photos():
        _graph_check(sessions, photo, _settings(232, 224, interpolation))
        tall = np.ascontiguousarray(photo[:, : photo.shape[1] // 3])  # shrunk with the vertical pass first
        _graph_check(sessions, tall, _settings(32, 32, interpolation))
    assert orders == {True, False}
