"""A run over image files, whatever drives it (service/predict.py in one process, service/bulk.py on Ray Data):
decoded files stacked into batches, the rows that say what each file is, the settings both check and the
summary both print.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.cores import usable_cores
from core.errors import UserError
from service.files import Decoded
from service.models import Ranked, top


@dataclass
class Batch:
    """Consecutive files: all of them in order (`items`), and the pixels of those that decoded, stacked."""

    items: list[Decoded]
    pixels: np.ndarray  # uint8 [n, H, W, 3], one row per item whose pixels are not None, in order


def batches(decoded: Iterable[Decoded], size: int, input_shape: tuple[int, int, int]) -> Iterator[Batch]:
    """Decoded files -> batches of `size` decoded images each (the last may hold fewer); a file that failed
    rides along in its batch's items, so the rows come out in the order of the files."""
    items: list[Decoded] = []
    pixels = np.empty((size, *input_shape), np.uint8)
    n = 0
    for item in decoded:
        items.append(item)
        if item.pixels is not None:
            pixels[n] = item.pixels
            n += 1
            if n == size:
                yield Batch(items, pixels)
                items, pixels, n = [], np.empty((size, *input_shape), np.uint8), 0
    if items:
        yield Batch(items, pixels[:n])


def rows(
    batch: Batch, ranked: Ranked, labels: Sequence[str], top_k: int, probabilities: bool = False
) -> list[dict[str, Any]]:
    """One row per file of `batch`: the best label, its score and the top-k, as `/classify` words them; with
    `probabilities`, also the score of every class in index order (what soft pseudo-labels need)."""
    out, n = [], 0
    for item in batch.items:
        if item.pixels is None:
            out.append({"path": item.path, "label": None, "index": None, "probability": None, "top_k": None,
                        "error": item.error})  # fmt: skip
            if probabilities:
                out[-1]["probabilities"] = None
            continue
        scores, order = ranked.scores[n], ranked.order[n]
        n += 1
        best = int(order[0])
        tops = top(labels, scores, order, top_k)
        out.append({"path": item.path, "label": labels[best], "index": best, "probability": float(scores[best]),
                    "top_k": tops, "error": None})  # fmt: skip
        if probabilities:
            out[-1]["probabilities"] = [float(v) for v in scores]
    return out


@dataclass
class Summary:
    classified: int
    unreadable: int
    seconds: float
    out: str

    @property
    def images_per_s(self) -> float:
        return (self.classified + self.unreadable) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.classified} classified, {self.unreadable} unreadable, {self.images_per_s:.1f} images/s "
                f"({self.seconds:.1f} s) -> {self.out}")  # fmt: skip


def default_workers() -> int:
    """Decoding processes by default: one per core this process may use (core.cores)."""
    return usable_cores()


def check_settings(top_k: int, batch_size: int, workers: int | None) -> int:
    """The number of decoding processes (None: one per core), or a UserError for a setting out of range."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise UserError(f"--workers must be 0 (decode in this process) or more, got {workers}")
    return workers
