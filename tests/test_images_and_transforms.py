"""Decoding rules (modes, EXIF, 16-bit, animation) and the train/eval transforms."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from export.images import open_rgb
from training.config import DEFAULTS
from training.transforms import eval_transform, train_transform

PREPROCESS = {"resize_size": 40, "crop_size": 32, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}


def encode(image: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB"])
def test_common_modes_become_rgb(mode):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = open_rgb(encode(src, fmt))
    assert out.mode == "RGB" and out.size == (7, 9)
    assert np.array_equal(np.asarray(out), np.asarray(src.convert("RGB")))


def test_sixteen_bit_is_scaled_not_clipped():
    wide = np.array([[0, 32896, 65535]], dtype=np.uint16)
    out = open_rgb(encode(Image.fromarray(wide), "PNG"))
    assert np.asarray(out)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    src = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = open_rgb(encode(src, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    buf.seek(0)
    red, green, blue = np.asarray(open_rgb(buf))[0, 0]
    assert red > 200 and blue < 50


def test_truncated_file_raises():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG").getvalue()
    with pytest.raises(OSError):
        open_rgb(io.BytesIO(data[: len(data) // 2]))


def test_eval_transform_is_resize_shorter_side_then_center_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = eval_transform(PREPROCESS)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    resized = image.resize((53, 40), Image.Resampling.BILINEAR)  # shorter side 60 -> 40, 80 -> 53
    left, top = round((53 - 32) / 2), round((40 - 32) / 2)  # torchvision's offsets: round half to even
    crop = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
    expected = torch.from_numpy((crop - 0.5) / 0.25).permute(2, 0, 1)
    assert (out - expected).abs().max() < 1e-6  # torchvision resizes PIL images with PIL itself


def test_train_transform_with_every_augmentation():
    augment = {
        **DEFAULTS["augment"],
        "crop": "random_resized",
        "crop_padding": 4,
        "hflip": 0.5,
        "rotation": 15,
        "color_jitter": 0.3,
        "auto_augment": "randaugment",
        "random_erasing": 0.5,
    }
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for auto in ("randaugment", "trivialaugment", "none"):
        out = train_transform(PREPROCESS, {**augment, "auto_augment": auto})(image)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
