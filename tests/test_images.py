"""Decoding rules (modes, EXIF, 16-bit, animation) shared by training, export and the service.

Torch-free: .ci/serving-pythons runs it on every supported Python without torch installed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.images import open_rgb


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
