"""The bundled dataset: scikit-learn's UCI handwritten digits written as a PNG image folder.

    python -m training data digits --out data/digits

1,797 real 8x8 grayscale scans, 10 classes, shipped inside the scikit-learn wheel (works offline).
They are upscaled to 32x32 RGB and split 70/10/20 (stratified, fixed seed) into
`train/`, `val/`, `test/`, one sub-folder per class, files named by their index in the original set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
SPLIT_SEED = 0
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split; every class is divided in the same proportions."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    out: dict[str, list[int]] = {name: [] for name in names}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum([fractions[n] for n in names])[:-1] * len(idx)
        for name, part in zip(names, np.split(idx, np.round(bounds).astype(int))):
            out[name] += part.tolist()
    return {name: np.sort(np.array(v, dtype=int)) for name, v in out.items()}


def write_digits(out: str | Path) -> Path:
    """Materialize the digits image folder at `out` (idempotent) and return its path."""
    from sklearn.datasets import load_digits

    out = Path(out)
    if (out / "test").is_dir() and (out / ".complete").exists():
        return out
    digits = load_digits()
    # values are 0..16 ink counts; scale to 0..255 and upscale like a real low-res photo would be
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    for split, indices in stratified_split(digits.target, FRACTIONS, SPLIT_SEED).items():
        for i in indices:
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], "L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{i}.png")
    (out / ".complete").touch()
    return out
