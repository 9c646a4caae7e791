"""Image files on disk -> the uint8 pixels a graph takes, or the one-line error that names the file.

The first of classification's three pieces outside the server (service/predict.py batches, service/models.py
holds the sessions): listing files and decoding them. Decoding is service/decode.py's `decode` under the
service's `Limits`, the code `/classify` runs on an upload, so a file gets the pixels its upload gets.
`decode_chunk` is the unit of work a decoding process (or a Ray Data task) runs: plain paths in, plain
results out, nothing that needs a session.

Whatever a folder holds, each entry is one row and nothing hangs: only regular files are opened (a FIFO, a
device, a socket, or a link to one, gets an error naming what it is), and never more than `max_image_bytes` + 1
bytes of one are read, whatever its size said; a folder that cannot be listed is an entry with its error; a name
that is not UTF-8 is written with each such byte as `\\xNN` (`shown_path`).
"""

from __future__ import annotations

import os
import stat
import typing as t
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS
from service.config import Limits
from service.decode import InputError, decode

if t.TYPE_CHECKING:
    from service.device_pixels import DevicePixels


@dataclass(frozen=True)
class Decoded:
    """One file: its pixels (uint8 [crop, crop, 3]) or the reason it has none."""

    path: str
    pixels: np.ndarray | None = None
    error: str | None = None


def shown_path(path: str | bytes | os.PathLike) -> str:
    """A path as rows and error messages write it: text that any UTF-8 writer (CSV, JSON, Parquet) takes. A name
    that is not UTF-8 comes from the OS as surrogate escapes (os.fsdecode); each such byte is written `\\xNN`
    (Python's backslashreplace), so `caf\\xe9.png` stands for the Latin-1 name and the run goes on."""
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


# what a path that is not a regular file is, for its error
KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
         (stat.S_ISSOCK, "a socket"))  # fmt: skip


def _kind(mode: int) -> str:
    return next((words for test, words in KINDS if test(mode)), "not a regular file")


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Each file as given (whatever its name), and every image file under each folder, searched recursively
    and sorted, so that a folder always lists in the same order; the inputs keep the order they come in.
    A folder that cannot be listed (no permission, say) is listed itself, in its place, so that its row
    carries the error (`decode_file`) instead of the folder being skipped unseen."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found: list[Path] = []

            def unlisted(error: OSError, found: list[Path] = found) -> None:
                found.append(Path(error.filename))

            for folder, subfolders, names in os.walk(item, onerror=unlisted):
                subfolders.sort()
                found += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
            out += sorted(found)
        elif item.exists():
            out.append(item)
        else:
            raise UserError(f"no such file or folder: {item}")
    return out


def read_regular(path: str | bytes | Path, name: str, limit: int) -> bytes:
    """The bytes of the regular file at `path` (links followed), at most `limit`; an InputError for anything else.

    Checked before it is opened (opening a FIFO waits for a writer, a device may do anything), opened without
    blocking and checked again (it may have been replaced in between), and read to `limit` + 1 bytes at most, so
    a file that grows (or lied about its size) is refused, not read to its end."""
    info = os.stat(path)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        with os.scandir(path):  # the error that kept it from being listed, such as Permission denied
            pass
        raise InputError(400, f"{name} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise InputError(400, f"image {name} is {_kind(mode)}, not a regular file: only regular files are read")
    size = info.st_size
    if size > limit:  # refused before reading, with decode's own words
        raise InputError(413, f"image {name} is {size} bytes; the limit is {limit}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(path, flags), "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(400, f"image {name} is {_kind(mode)}, not a regular file: only regular files are read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(
            413, f"image {name} holds more than {limit} bytes (more than its size said); the limit is {limit}"
        )
    return data


def decode_file(
    path: str | bytes | Path, limits: Limits, preprocess: dict[str, Any], device: DevicePixels | None = None
) -> Decoded:
    """One file -> Decoded; never raises for a bad file (or a folder that could not be listed): a bulk job lists
    it and goes on. `device`: where the images it takes are decoded and resized (service/device_pixels.py)."""
    name = shown_path(path)
    try:
        data = read_regular(path, name, limits.max_image_bytes)
        return Decoded(name, pixels=decode(data, name, limits, preprocess, device))
    except InputError as e:
        return Decoded(name, error=e.message)
    except OSError as e:
        what = "folder" if os.path.isdir(path) else "image"
        return Decoded(name, error=f"{what} {name} cannot be read: {e.strerror or e}")
    except Exception as e:  # a decoder bug on one odd file (the service answers it with a 500) must not end a run
        return Decoded(name, error=f"image {name} cannot be decoded: {type(e).__name__}: {e}")


def decode_chunk(
    paths: Sequence[str | Path], limits: Limits, preprocess: dict[str, Any], device: DevicePixels | None = None
) -> list[Decoded]:
    """Several files at once: what a decoding process runs per task, so that one round trip carries many images."""
    return [decode_file(p, limits, preprocess, device) for p in paths]


def decode_files(
    paths: Sequence[str | Path],
    preprocess: dict[str, Any],
    limits: Limits | None = None,
    pool: Executor | None = None,
    chunk: int = 16,
    in_flight: int = 8,
    device: DevicePixels | None = None,
) -> Iterator[Decoded]:
    """Every file decoded, in the order of `paths`: in this process, or in `pool` with at most `in_flight` chunks
    of `chunk` files submitted, so that decoding runs ahead of the session by a bounded amount (a folder of a
    million files never sits decoded in memory). `pool`: decoding processes, or, with `device` (which lives in
    this process), threads."""
    limits = limits or Limits()
    if pool is None:
        for p in paths:
            yield decode_file(p, limits, preprocess, device)
        return
    chunks = (paths[i : i + chunk] for i in range(0, len(paths), chunk))
    pending: deque[Future] = deque()
    for part in chunks:
        pending.append(pool.submit(decode_chunk, part, limits, preprocess, device))
        if len(pending) >= in_flight:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()
