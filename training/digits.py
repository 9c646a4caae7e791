"""The bundled dataset: scikit-learn's UCI handwritten digits written as a PNG image folder.

    python -m training data digits --out data/digits

1,797 real 8x8 grayscale scans, 10 classes, shipped inside the scikit-learn wheel (works offline).
They are upscaled to 32x32 RGB and split 70/10/20 (stratified, fixed seed) into
`train/`, `val/`, `test/`, one sub-folder per class, files named by their index in the original set.

    python -m training data digits --out data/digits-10pct --label-fraction 0.1

keeps a stratified 10% of the train split's labels and writes the other training images, without
their class, to `unlabeled/` (for self-training and distillation experiments); val and test are unchanged.
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


def write_digits(out: str | Path, label_fraction: float = 1.0) -> Path:
    """Materialize the digits image folder at `out` (idempotent) and return its path."""
    from sklearn.datasets import load_digits

    out = Path(out)
    marker = f"label_fraction={label_fraction}\n"
    done = out / ".complete"
    # an empty marker comes from before label fractions existed: the full set
    if (
        (out / "test").is_dir()
        and done.exists()
        and done.read_text() in (marker, "" if label_fraction == 1 else marker)
    ):
        return out
    if not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {label_fraction}")
    digits = load_digits()
    # values are 0..16 ink counts; scale to 0..255 and upscale like a real low-res photo would be
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    parts = stratified_split(digits.target, FRACTIONS, SPLIT_SEED)
    if label_fraction < 1.0:
        train = parts.pop("train")
        kept = stratified_split(digits.target[train], {"train": label_fraction, "unlabeled": 1 - label_fraction}, 0)
        parts.update(train=train[kept["train"]], unlabeled=train[kept["unlabeled"]])
    for split, indices in parts.items():
        for i in indices:
            folder = out / split if split == "unlabeled" else out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], "L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{i}.png")
    done.write_text(marker)
    return out
