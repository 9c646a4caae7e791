"""Classify image files on Ray Data: `python -m service.predict ... --ray [ADDRESS]`, the same rows as the local
path, written as Parquet, on one machine or a cluster.

    python -m service.predict digits-resnet18 photos/ --out labels/ --ray                 # Ray on this machine
    python -m service.predict digits-resnet18 photos/ --out labels/ --ray 10.0.0.5:6379    # join a cluster
    RAY_ADDRESS=10.0.0.5:6379 python -m service.predict model.onnx photos/ --out labels/ --ray --probabilities

The job reads like Ray's own batch-inference examples: a dataset of file paths, a `map_batches` that reads and
decodes them in CPU tasks (service/files.py's `decode_chunk`, the code `/classify` runs on an upload), a
`map_batches` over a callable class whose actors hold the sessions (service/models.py's `Model`; one GPU an
actor where the cluster has GPUs), and a last `map_batches` that writes each part as one Parquet file. The rows
are service/predict.py's `rows`, so they mean what the CSV / JSON lines of the local path mean.

--out is a folder of `part-<hash>.parquet` files, each written under a temporary name and renamed when whole,
named after the paths it holds (a retried task rewrites the same file). A rerun with the same --out reads the
paths already written and classifies only the rest, so a killed job resumes and every image ends up in exactly
one row. The files must be readable, and --out writable, at the same path on every node (a shared filesystem).

Only `--ray` imports this module: the service and the torch-free serving installs never import ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS
from service.config import Limits
from service.files import Decoded, decode_chunk, list_images
from service.models import Model, Ranked
from service.predict import Batch, Summary, check_settings, rows

PART_GLOB = "part-*.parquet"
DECODE_CHUNK = 64  # files per decoding call (a small block of Ray Data): fewer, larger blocks cost Ray less
ROWS_PER_FILE = 1024  # rows a Parquet part holds: what a killed job redoes at most per writing task
PATHS_PER_BLOCK = 128  # the dataset's blocks of paths: a block is decoded by one task, so many blocks keep every
# core decoding (one block of 2,000 paths ran as one task on one core)


def schema(probabilities: bool) -> Any:
    """The Parquet columns: predict.COLUMNS (probabilities as float64, the floats the JSON of the local path
    holds) and, with --probabilities, the full vector."""
    import pyarrow as pa

    top = pa.struct([("label", pa.string()), ("index", pa.int64()), ("probability", pa.float64())])
    fields = [("path", pa.string()), ("label", pa.string()), ("index", pa.int64()), ("probability", pa.float64()),
              ("top_k", pa.list_(top)), ("error", pa.string())]  # fmt: skip
    if probabilities:
        fields.append(("probabilities", pa.list_(pa.float64())))
    return pa.schema(fields)


def done_paths(out: Path) -> set[str]:
    """The paths the Parquet parts in `out` already hold; a temporary file a killed writer left is removed."""
    import pyarrow.parquet as pq

    for leftover in out.glob(".part-*.tmp"):
        leftover.unlink(missing_ok=True)
    done: set[str] = set()
    for part in sorted(out.glob(PART_GLOB)):
        done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
    return done


def read_parts(out: str | Path) -> list[dict[str, Any]]:
    """Every row of the Parquet parts in `out`, as the dicts predict.read_rows gives, sorted by path."""
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob(PART_GLOB))
    table = [row for part in parts for row in pq.read_table(part).to_pylist()]
    return sorted(table, key=lambda row: row["path"])


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def decode_batch(
    batch: dict[str, np.ndarray], preprocess: dict[str, Any], limits: Limits, shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """A CPU task: paths -> pixels (uint8 [n, *shape], zeros for a file that failed) and the error of each."""
    decoded = decode_chunk(list(batch["path"]), limits, preprocess)
    pixels = np.zeros((len(decoded), *shape), np.uint8)
    for i, d in enumerate(decoded):
        if d.pixels is not None:
            pixels[i] = d.pixels
    return {
        "path": np.array([d.path for d in decoded], dtype=object),
        "pixels": pixels,
        "error": np.array([d.error or "" for d in decoded], dtype=object),
        "decode_node": np.array([_node()] * len(decoded), dtype=object),
    }


class Classify:
    """The callable class of the actor pool: each actor loads the Model once and ranks batch after batch."""

    def __init__(self, spec: str, voting: str, weights: list[float] | None, device: str, batch_size: int,
                 top_k: int, probabilities: bool):  # fmt: skip
        self.model = Model.load(spec, voting, weights, device, batch_size)
        self.k, self.probabilities = min(top_k, len(self.model.labels)), probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        items = [Decoded(str(p), pixels=np.empty(0) if good else None, error=None if good else str(e))
                 for p, e, good in zip(batch["path"], batch["error"], ok)]  # fmt: skip
        pixels = batch["pixels"][ok]
        if pixels.dtype == object:  # blocks Ray stored as a ragged tensor column come back as arrays of arrays
            pixels = np.stack([np.asarray(p, np.uint8) for p in pixels]) if len(pixels) else np.empty((0,))
        pixels = np.ascontiguousarray(pixels, np.uint8)
        empty = Ranked(np.empty((0, 0)), np.empty((0, 0)))
        ranked = self.model(pixels) if len(pixels) else empty
        out = rows(Batch(items, pixels), ranked, self.model.labels, self.k, self.probabilities)
        # the rows as JSON text: one column type whatever the batch holds (all errors, no errors)
        return {
            "row": np.array([json.dumps(r) for r in out], dtype=object),
            "decode_node": batch["decode_node"],
            "classify_node": np.array([_node()] * len(out), dtype=object),
        }


def write_part(batch: dict[str, np.ndarray], out: str, probabilities: bool) -> dict[str, np.ndarray]:
    """One Parquet part per batch, written whole under a temporary name, then renamed: a killed job leaves
    complete parts only. The name is a hash of the paths, so a retried task replaces its own part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = [json.loads(r) for r in batch["row"]]
    arrow = pa.Table.from_pylist(table, schema=schema(probabilities))
    name = hashlib.sha256("\n".join(r["path"] for r in table).encode()).hexdigest()[:20]
    final, temporary = Path(out, f"part-{name}.parquet"), Path(out, f".part-{name}.tmp")
    pq.write_table(arrow, temporary)
    os.replace(temporary, final)
    errors = sum(r["error"] is not None for r in table)
    nodes = Counter(f"decode {n}" for n in batch["decode_node"])
    nodes.update(f"classify {n}" for n in batch["classify_node"])
    return {"file": np.array([final.name]), "rows": np.array([len(table)]), "errors": np.array([errors]),
            "nodes": np.array([json.dumps(nodes)])}  # fmt: skip


@dataclass
class BulkSummary(Summary):
    skipped: int = 0  # images an earlier run had written
    files: int = 0
    nodes: dict[str, int] = field(default_factory=dict)  # "decode <node id>" / "classify <node id>" -> images
    startup_s: float = 0.0

    def __str__(self) -> str:
        decoders = {k.split()[1] for k in self.nodes if k.startswith("decode ")}
        classifiers = {k.split()[1] for k in self.nodes if k.startswith("classify ")}
        return (f"{super().__str__()} ({self.files} Parquet parts; {self.skipped} already written; "
                f"Ray start-up {self.startup_s:.1f} s; decoded on {len(decoders)} node(s), classified on "
                f"{len(classifiers)})")  # fmt: skip


def start_ray(address: str | None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); without either, start Ray on this machine, on
    127.0.0.1 and without its dashboard (nothing listens beyond this machine)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        # Ray otherwise swaps 127.0.0.1 for the machine's network address when it resolves a node's
        # (ray/_private/services.py, resolve_ip_for_localhost; ray 2.60), which a run on this machine never needs
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address is None:
        # "local": a new instance, never the cluster a `ray start` or an earlier test left recorded in /tmp/ray
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def gpus_in_cluster() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def predict_on_ray(
    model: str,
    inputs: Iterable[str | Path],
    out: str | Path,
    address: str | None = None,
    top_k: int = 5,
    batch_size: int = 64,
    voting: str = "soft",
    weights: list[float] | None = None,
    device: str = "auto",
    probabilities: bool = False,
    limits: Limits | None = None,
    actors: int | None = None,
    rows_per_file: int = ROWS_PER_FILE,
) -> BulkSummary:
    """Classify every image file of `inputs` on Ray Data and write Parquet parts into the folder `out`,
    skipping the paths parts already there hold. `actors`: the size of the classifying pool (default: one
    per GPU, or one on a cluster without GPUs)."""
    start = time.perf_counter()
    inputs = list(inputs)
    paths = list_images(inputs)
    if not paths:
        raise UserError(f"no image files in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    out = Path(out)
    if out.suffix.lower() in (".csv", ".jsonl") or out.is_file():
        raise UserError(f"with --ray, --out is a folder of Parquet parts, got {out}")
    check_settings(top_k, batch_size, 0)
    if rows_per_file < 1:
        raise UserError(f"--part-rows must be at least 1, got {rows_per_file}")
    if actors is not None and actors < 1:
        raise UserError(f"--actors must be at least 1, got {actors}")
    try:
        import pyarrow  # noqa: F401
        import ray.data
    except ImportError:
        raise UserError("--ray needs Ray Data: pip install 'imgclf[bulk]' (ray[data] and pyarrow)") from None
    local = Model.load(model, voting, weights, "cpu")  # refuses a bad model here, before Ray starts
    out.mkdir(parents=True, exist_ok=True)
    done = done_paths(out)
    todo = [os.path.abspath(p) for p in paths]  # every node reads them, whatever its working directory
    todo = [p for p in todo if p not in done]
    ray_start = time.perf_counter()
    start_ray(address)
    startup = time.perf_counter() - ray_start
    summary = BulkSummary(0, 0, 0.0, str(out), skipped=len(paths) - len(todo), startup_s=startup)
    if todo:
        gpus = gpus_in_cluster() if device != "cpu" else 0
        if device == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
        pool = actors or max(gpus, 1)
        blocks = -(-len(todo) // PATHS_PER_BLOCK)
        ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs={"preprocess": local.preprocess, "limits": limits or Limits(),
                            "shape": local.input_shape}, batch_size=DECODE_CHUNK, num_cpus=0.5)  # fmt: skip
        ds = ds.map_batches(
            Classify,
            fn_constructor_args=(model, voting, weights, "cuda" if gpus else "cpu", batch_size, top_k, probabilities),
            batch_size=batch_size,
            concurrency=pool,
            num_gpus=1 if gpus else 0,
            # a whole CPU where the actor computes on it; the decoding tasks ask half of one, which also keeps Ray
            # from fusing them into the actors (it fuses operators that ask the same resources)
            num_cpus=0 if gpus else 1,
        )
        ds = ds.map_batches(write_part, fn_kwargs={"out": str(out.absolute()), "probabilities": probabilities},
                            batch_size=rows_per_file, num_cpus=0.1)  # fmt: skip
        for part in ds.iter_rows():
            summary.files += 1
            summary.unreadable += int(part["errors"])
            summary.classified += int(part["rows"]) - int(part["errors"])
            for key, n in json.loads(part["nodes"]).items():
                summary.nodes[key] = summary.nodes.get(key, 0) + n
    summary.seconds = time.perf_counter() - start
    return summary
