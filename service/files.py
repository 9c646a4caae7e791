"""Image files on disk -> the uint8 pixels a graph takes, or the one-line error that names the file.

The first of classification's three pieces outside the server (service/predict.py batches, service/models.py
holds the sessions): listing files and decoding them. Decoding is service/decode.py's `decode` under the
service's `Limits`, the code `/classify` runs on an upload, so a file gets the pixels its upload gets.
`decode_chunk` is the unit of work a decoding process (or a Ray Data task) runs: plain paths in, plain
results out, nothing that needs a session.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS
from service.config import Limits
from service.decode import InputError, decode


@dataclass(frozen=True)
class Decoded:
    """One file: its pixels (uint8 [crop, crop, 3]) or the reason it has none."""

    path: str
    pixels: np.ndarray | None = None
    error: str | None = None


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Each file as given (whatever its name), and every image file under each folder, searched recursively
    and sorted, so that a folder always lists in the same order; the inputs keep the order they come in."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = []
            for folder, subfolders, names in os.walk(item):
                subfolders.sort()
                found += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
            out += sorted(found)
        elif item.exists():
            out.append(item)
        else:
            raise UserError(f"no such file or folder: {item}")
    return out


def decode_file(path: str | Path, limits: Limits, preprocess: dict[str, Any]) -> Decoded:
    """One file -> Decoded; never raises for a bad file: a bulk job lists it and goes on."""
    name = str(path)
    try:
        size = os.stat(path).st_size
        if size > limits.max_image_bytes:  # refused before reading, with decode's own words
            raise InputError(413, f"image {name} is {size} bytes; the limit is {limits.max_image_bytes}")
        with open(path, "rb") as f:
            data = f.read()
        return Decoded(name, pixels=decode(data, name, limits, preprocess))
    except InputError as e:
        return Decoded(name, error=e.message)
    except OSError as e:
        return Decoded(name, error=f"image {name} cannot be read: {e.strerror or e}")
    except Exception as e:  # a decoder bug on one odd file (the service answers it with a 500) must not end a run
        return Decoded(name, error=f"image {name} cannot be decoded: {type(e).__name__}: {e}")


def decode_chunk(paths: Sequence[str | Path], limits: Limits, preprocess: dict[str, Any]) -> list[Decoded]:
    """Several files at once: what a decoding process runs per task, so that one round trip carries many images."""
    return [decode_file(p, limits, preprocess) for p in paths]


def decode_files(
    paths: Sequence[str | Path],
    preprocess: dict[str, Any],
    limits: Limits | None = None,
    pool: ProcessPoolExecutor | None = None,
    chunk: int = 16,
    in_flight: int = 8,
) -> Iterator[Decoded]:
    """Every file decoded, in the order of `paths`: in this process, or in `pool`'s processes with at most
    `in_flight` chunks of `chunk` files submitted, so that decoding runs ahead of the session by a bounded
    amount (a folder of a million files never sits decoded in memory)."""
    limits = limits or Limits()
    if pool is None:
        for p in paths:
            yield decode_file(p, limits, preprocess)
        return
    chunks = (paths[i : i + chunk] for i in range(0, len(paths), chunk))
    pending: deque[Future] = deque()
    for part in chunks:
        pending.append(pool.submit(decode_chunk, part, limits, preprocess))
        if len(pending) >= in_flight:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()
