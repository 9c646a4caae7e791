"""Classify image files without a server and without torch: the probabilities `/classify` would answer.

    python -m service.predict digits-resnet18 photos/ --out labels.csv
    python -m service.predict models/digits-resnet18.onnx a.png b.jpg --out labels.jsonl --top-k 3
    python -m service.predict digits-resnet18+digits-b photos/ --out votes.csv --voting hard
    python -m service.predict digits-resnet18:latest photos/ --out labels.csv --batch-size 128 --workers 4
    python -m service.predict photos-resnet50 photos/ --out labels.csv --preprocessing gpu   # JPEGs on the GPU

MODEL is a BentoML model-store tag (name or name:version, in $BENTOML_HOME), an `.onnx` file exported by this
project, or an ensemble `a+b` of them (soft voting; --voting hard | weighted --weights 2 1). IMAGE_OR_FOLDER:
files, or folders searched recursively for image files, in sorted order. --out: CSV (`.csv`; top_k as JSON
text) or JSON lines (`.jsonl`), one row per file with `path, label, index, probability, top_k, error`; a file
that cannot be decoded gets its error and the run goes on.

Three pieces, each usable alone (a Ray Data job reuses them): service/files.py lists and decodes files (here in
a pool of spawned processes, `--workers`, every core by default), service/rows.py stacks decoded images into
arrays of `--batch-size` and words each file's row, and service/models.py's `Model` runs them through the sessions
(in this process, where ONNX Runtime uses every core for its call). `--ray` hands the same pieces to Ray Data
(service/bulk.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import typing as t
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from core.errors import UserError, one_line
from core.images import IMAGE_EXTENSIONS
from core.voting import VOTINGS
from service.config import Limits
from service.decode import decoding_processes
from service.files import decode_files, list_images
from service.models import Model
from service.preprocessing import choose_for, device_pixels
from service.rows import Summary, batches, check_settings, rows

if t.TYPE_CHECKING:
    from service.device_pixels import DevicePixels

COLUMNS = ("path", "label", "index", "probability", "top_k", "error")
LIST_COLUMNS = ("top_k", "probabilities")  # JSON text in a CSV cell
FORMATS = (".csv", ".jsonl")
PROGRESS_EVERY_S = 10.0  # without a terminal, a plain progress line this often


def check_out(path: str | Path) -> str:
    """The output format of `path` (its suffix), or a UserError before anything runs."""
    kind = Path(path).suffix.lower()
    if kind not in FORMATS:
        raise UserError(f"--out must end in .csv or .jsonl, got {path}")
    return kind


class Writer:
    """Rows to a CSV file (top_k as JSON text, an empty cell for None) or a JSON-lines file, by its suffix."""

    def __init__(self, path: str | Path, probabilities: bool = False):
        self.path = Path(path)
        self.kind = check_out(path)
        try:
            self.file: TextIO = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        if self.kind == ".csv":
            self.csv = csv.DictWriter(self.file, [*COLUMNS, "probabilities"] if probabilities else COLUMNS)
            self.csv.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self.kind == ".csv":
                lists = {k: json.dumps(row[k]) if row[k] is not None else None for k in LIST_COLUMNS if k in row}
                self.csv.writerow({**row, **lists})
            else:
                self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """A file `Writer` wrote, back as rows (index an int, probability a float, top_k a list, None where empty)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            row = {k: (v if v != "" else None) for k, v in row.items()}
            if row["index"] is not None:
                row["index"], row["probability"] = int(row["index"]), float(row["probability"])
                for key in LIST_COLUMNS:
                    if row.get(key) is not None:
                        row[key] = json.loads(row[key])
            out.append(row)
    return out


class Progress:
    """tqdm's bar on a terminal where tqdm is installed (it is no serving dependency), else a plain line on
    stderr every PROGRESS_EVERY_S seconds, or nothing."""

    def __init__(self, total: int, show: bool = True):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.last = self.start
        self.bar, self.lines = None, show
        if show and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.last >= PROGRESS_EVERY_S:
            self.last = time.perf_counter()
            rate = self.done / (self.last - self.start)
            print(f"{self.done}/{self.total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def classify(
    model: Model,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    workers: int | None = None,
    limits: Limits | None = None,
    probabilities: bool = False,
    device: DevicePixels | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of `paths` batch by batch, in order: decoding in `workers` spawned processes (0: in this
    process; None: one per core), the sessions in this one. `device`: the GPU preprocessing backend's pixel work
    (service/device_pixels.py), which lives in this process: the `workers` are then threads, and the images it does
    not take are decoded by Pillow in them."""
    workers = check_settings(top_k, batch_size, workers)
    k = min(top_k, len(model.labels))
    pool: Executor | None = None
    if paths and workers:
        pool = ThreadPoolExecutor(workers, "decode") if device is not None else decoding_processes(workers)
    try:
        decoded = decode_files(paths, model.preprocess, limits, pool, in_flight=4 * workers, device=device)
        for batch in batches(decoded, batch_size, model.input_shape):
            yield rows(batch, model(batch.pixels), model.labels, k, probabilities)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def predict(
    model: str | Model,
    inputs: Iterable[str | Path],
    out: str | Path,
    top_k: int = 5,
    batch_size: int = 64,
    workers: int | None = None,
    voting: str = "soft",
    weights: list[float] | None = None,
    device: str = "auto",
    limits: Limits | None = None,
    progress: bool = False,
    probabilities: bool = False,
    preprocessing: str = "auto",
) -> Summary:
    """Classify every image file of `inputs` (files, folders searched recursively) with `model` (a store tag,
    an .onnx file, `a+b`, or a loaded Model) and write one row per file to `out` (.csv or .jsonl).
    `preprocessing`: where the pixels are made, serving.yaml's key of that name (service/preprocessing.py)."""
    start = time.perf_counter()
    inputs = list(inputs)
    paths = list_images(inputs)
    if not paths:
        raise UserError(f"no image files in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    # every setting is refused before the models load, and the file is opened after: a refusal leaves it be
    check_out(out)
    check_settings(top_k, batch_size, workers)
    chosen = choose_for(preprocessing, device)
    if not isinstance(model, Model):
        model = Model.load(model, voting, weights, device, batch_size)
    pixels_on = device_pixels(chosen)  # on GPU 0, where the sessions run (service/models.py)
    writer = Writer(out, probabilities)
    try:
        bar = Progress(len(paths), progress)
        classified = unreadable = 0
        for part in classify(model, paths, top_k, batch_size, workers, limits, probabilities, pixels_on):
            writer.write(part)
            bad = sum(row["error"] is not None for row in part)
            classified, unreadable = classified + len(part) - bad, unreadable + bad
            bar.update(len(part))
        bar.close()
    finally:
        writer.close()
    return Summary(classified, unreadable, time.perf_counter() - start, str(out))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.predict",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="store tag (name or name:version), .onnx file, or an ensemble a+b")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders to search")
    parser.add_argument("--out", required=True, help="rows to write: .csv or .jsonl (with --ray: a folder)")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image in top_k")
    parser.add_argument("--batch-size", type=int, default=64, help="images per session call")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes; 0: decode in this process "
                        "(default: one per core)")  # fmt: skip
    parser.add_argument("--voting", default="soft", choices=VOTINGS, help="how an ensemble's members vote")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per member, for --voting weighted")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--preprocessing", default="auto", choices=["auto", "host", "gpu"], help="where the pixels "
                        "are made, as serving.yaml's key: Pillow on the host, or JPEGs decoded and resized on the "
                        "GPU (docs/serving.md)")  # fmt: skip
    parser.add_argument("--probabilities", action="store_true", help="add every class's score, in index order "
                        "(for soft pseudo-labels: python -m training self-train --teacher-labels)")  # fmt: skip
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run on Ray Data and write Parquet "
                        "parts into the folder --out (rerun to resume): on this machine, or the cluster at ADDRESS "
                        "(or $RAY_ADDRESS); service/bulk.py")  # fmt: skip
    parser.add_argument("--actors", type=int, help="with --ray: classifying actors (default: one per GPU, else "
                        "one per CPU)")  # fmt: skip
    parser.add_argument("--part-rows", type=int, default=1024, help="with --ray: rows a Parquet part holds (what "
                        "a killed job redoes at most per part)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.ray is not None:
            from service.bulk import predict_on_ray  # imports ray: only here

            summary = predict_on_ray(args.model, args.inputs, args.out, args.ray or None, args.top_k, args.batch_size,
                                     args.voting, args.weights, args.device, args.probabilities,
                                     actors=args.actors, rows_per_file=args.part_rows,
                                     preprocessing=args.preprocessing)  # fmt: skip
        else:
            summary = predict(args.model, args.inputs, args.out, args.top_k, args.batch_size, args.workers,
                              args.voting, args.weights, args.device, progress=True,
                              probabilities=args.probabilities, preprocessing=args.preprocessing)  # fmt: skip
    except UserError as e:
        print(one_line(e), file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
