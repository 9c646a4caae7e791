"""A small dataset of real photographs: crops of the sample photos scikit-image and scikit-learn ship.

    python -m training data photos --out data/photos

Six classes, one source photo each (scikit-image's astronaut, chelsea the cat, coffee and rocket;
scikit-learn's china temple and flower), shipped inside the two wheels, so it works offline. Every image is
a random crop (25-90% of the photo's area, aspect 3:4 to 4:3) of its class's photo, maybe mirrored,
with brightness, contrast, saturation and hue changed, resized so its longer side is 200-480 px and saved
as JPEG at quality 70-95: `data/photos/{train,val,test}/<class>/<n>.jpg`, 40 / 10 / 10 per class.

Every (class, split) pair draws from its own seeded generator, so two writes give identical files and the
val and test crops are other crops than the train ones (same photo, other framing, flip and colours).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from core.errors import UserError

# class name -> (package, sample name)
SOURCES = {
    "astronaut": ("skimage", "astronaut"),
    "cat": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "flower": ("sklearn", "flower.jpg"),
    "rocket": ("skimage", "rocket"),
    "temple": ("sklearn", "china.jpg"),
}
COUNTS = {"train": 40, "val": 10, "test": 10}
SEED = 0
LONG_SIDE = (200, 480)  # output size range: about what a phone photo is after a web resize
VERSION = "photos v1\n"  # the .complete marker; a change to how images are made changes it


def _source(package: str, name: str) -> Image.Image:
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name)).convert("RGB")
    try:
        from skimage import data
    except ImportError:
        raise UserError("the photos dataset needs scikit-image's sample photos: pip install scikit-image") from None
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate every pixel's hue by `shift` (a fraction of the colour circle)."""
    h, s, v = image.convert("HSV").split()
    lut = [(round(i + shift * 256)) % 256 for i in range(256)]
    return Image.merge("HSV", (h.point(lut), s, v)).convert("RGB")


def variant(photo: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One random view of `photo` and the JPEG quality to save it at."""
    width, height = photo.size
    area = rng.uniform(0.25, 0.9) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = min(width, round((area * aspect) ** 0.5))
    h = min(height, round((area / aspect) ** 0.5))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = photo.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    image = _shift_hue(image, rng.uniform(-0.04, 0.04))
    long_side = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    scale = long_side / max(w, h)
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return image, int(rng.integers(70, 96))


def write_photos(root: str | Path) -> Path:
    """Materialize the photos image folder at `root` (idempotent) and return its path."""
    root = Path(root)
    done = root / ".complete"
    if done.is_file() and done.read_text() == VERSION:
        return root
    for class_index, (name, (package, sample)) in enumerate(SOURCES.items()):
        photo = _source(package, sample)
        for split_index, (split, count) in enumerate(COUNTS.items()):
            rng = np.random.default_rng([SEED, class_index, split_index])
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                image, quality = variant(photo, rng)
                image.save(folder / f"{n}.jpg", "JPEG", quality=quality)
    done.write_text(VERSION)
    return root
