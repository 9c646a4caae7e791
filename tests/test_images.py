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


# What each EXIF orientation asks a viewer to do to the stored pixels, written with numpy alone (the EXIF
# specification's table), so a rotation the wrong way or a flip on the wrong axis cannot pass.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise to display
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise to display
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(orientation):
    """A 3x2 image whose six pixels all differ (lossless PNG with an eXIf chunk): every pixel must land where
    the orientation puts it."""
    stored = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = open_rgb(encode(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    assert np.array_equal(np.asarray(out), UPRIGHT[orientation](stored))


def test_alpha_is_dropped_not_composited():
    """Half-transparent and fully transparent pixels keep their colour (torchvision's ImageFolder loader does
    the same); compositing over black or white would change them."""
    rgba = np.array([[[200, 100, 50, 128], [10, 220, 30, 0]], [[0, 0, 255, 255], [255, 255, 255, 64]]], np.uint8)
    out = np.asarray(open_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert out.tolist() == [[[200, 100, 50], [10, 220, 30]], [[0, 0, 255], [255, 255, 255]]]
    gray = np.array([[[90, 128], [250, 0]]], np.uint8)  # LA: luminance and alpha
    out = np.asarray(open_rgb(encode(Image.fromarray(gray, "LA"), "PNG")))
    assert out.tolist() == [[[90, 90, 90], [250, 250, 250]]]


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    buf.seek(0)
    red, green, blue = np.asarray(open_rgb(buf))[0, 0]
    assert red > 200 and blue < 50


def test_truncated_file_raises():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG").getvalue()
    with pytest.raises(OSError, match="^image file is truncated") as raised:
        open_rgb(io.BytesIO(data[: len(data) // 2]))
    assert type(raised.value) is OSError  # not a FileNotFoundError or other subclass standing in for it
