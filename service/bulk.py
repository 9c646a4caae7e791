"""Classify image files on Ray Data: `python -m service.predict ... --ray [ADDRESS]`, the same rows as the local
path, written as Parquet, on one machine or a cluster.

    python -m service.predict digits-resnet18 photos/ --out labels/ --ray                 # Ray on this machine
    python -m service.predict digits-resnet18 photos/ --out labels/ --ray 10.0.0.5:6379    # join a cluster
    RAY_ADDRESS=10.0.0.5:6379 python -m service.predict model.onnx photos/ --out labels/ --ray --probabilities

The job reads like Ray's own batch-inference examples: a dataset of file paths and a `map_batches` over a
callable class whose actors hold the sessions (service/models.py's `Model`) and write what they rank. Where
the cluster has GPUs, one actor a GPU classifies and CPU tasks decode ahead of it (service/files.py's
`decode_chunk`, the code `/classify` runs on an upload); on CPUs alone every core runs an actor that decodes
its own files (`layout` says why). Each actor call is one Parquet part. The rows are service/predict.py's
`rows`, so they mean what the CSV / JSON lines of the local path mean.

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
import socket
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS
from service.config import Limits
from service.files import Decoded, decode_chunk, decode_files, list_images, shown_path
from service.models import Model
from service.preprocessing import choose_for, device_pixels, wanted
from service.rows import Summary, batches, check_settings, rows

PART_GLOB = "part-*.parquet"
DECODE_CHUNK = 64  # files per decoding task where GPUs classify: many tasks keep every core decoding
ROWS_PER_FILE = 1024  # rows a Parquet part holds at most: what a killed job redoes per actor call
# how long to wait for a cluster's address to answer before saying that nothing does: Ray itself tries an address
# where nothing listens 20 times, about 40 s each, before it gives up (ray/_private/node.py, `_init_gcs_client`;
# ray 2.60): a mistyped address held the command for over ten minutes
JOIN_PROBE_S = 10.0


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


def still_to_do(paths: Iterable[str | Path], out: Path) -> list[str]:
    """The absolute paths (every node reads them, whatever its working directory) that no Parquet part in `out`
    holds yet, in order: what a rerun classifies."""
    done = done_paths(out)
    # a row holds its path as shown_path writes it (a name that is not UTF-8 escaped), so that is what is compared:
    # the name itself never matched, and such a file was classified again by every rerun
    return [p for p in map(os.path.abspath, paths) if shown_path(p) not in done]


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
    """A CPU task where GPUs classify: paths -> pixels (uint8 [n, *shape], zeros for a file that failed) and
    the error of each."""
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


def _decoded(batch: dict[str, np.ndarray]) -> list[Decoded]:
    """decode_batch's columns back as Decoded items."""
    pixels = batch["pixels"]
    if pixels.dtype == object:  # blocks Ray stored as a ragged tensor column come back as arrays of arrays
        pixels = [np.asarray(p, np.uint8) for p in pixels]
    return [Decoded(str(p), pixels=pixels[i] if not e else None, error=str(e) or None)
            for i, (p, e) in enumerate(zip(batch["path"], batch["error"]))]  # fmt: skip


def write_part(table: list[dict[str, Any]], out: str | Path, probabilities: bool) -> str:
    """One Parquet part, written whole under a temporary name, then renamed: a killed job leaves complete parts
    only. The name is a hash of the paths, so a retried task replaces its own part. Returns the file's name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pylist(table, schema=schema(probabilities))
    name = hashlib.sha256("\n".join(r["path"] for r in table).encode()).hexdigest()[:20]
    final, temporary = Path(out, f"part-{name}.parquet"), Path(out, f".part-{name}.tmp")
    pq.write_table(arrow, temporary)
    os.replace(temporary, final)
    return final.name


class Classify:
    """The callable class of the actor pool: each actor loads the Model once; each call is one Parquet part.

    A call gets paths, which the actor decodes itself (on a cluster of CPUs: every core runs an actor, and the
    decoded pixels never travel through Ray's object store), or the pixels decoding tasks made (where GPUs
    classify and the CPUs decode). It ranks them in batches of `batch_size`, writes the part and returns one
    summary row."""

    def __init__(self, spec: str, voting: str, weights: list[float] | None, device: str, batch_size: int,
                 cpu_threads: int, top_k: int, probabilities: bool, out: str, limits: Limits,
                 preprocessing: str = "host"):  # fmt: skip
        """preprocessing: "gpu" to decode and resize the files' JPEGs on the actor's GPU (service/device_pixels.py),
        and the rest with Pillow, in `cpu_threads` threads of the actor."""
        chosen = choose_for(preprocessing, device)  # here: the actor's node may differ from the driver's
        self.model = Model.load(spec, voting, weights, device, batch_size, cpu_threads)
        self.batch_size, self.limits, self.out = batch_size, limits, out
        self.k, self.probabilities = min(top_k, len(self.model.labels)), probabilities
        self.device = device_pixels(chosen)  # Ray gives an actor its GPU as device 0 (CUDA_VISIBLE_DEVICES)
        self.threads = ThreadPoolExecutor(cpu_threads, "decode") if self.device is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        node = _node()
        if "pixels" in batch:
            decoded, decode_nodes = _decoded(batch), list(batch["decode_node"])
        else:
            paths, preprocess = list(batch["path"]), self.model.preprocess
            decoded = list(decode_files(paths, preprocess, self.limits, self.threads, device=self.device))
            decode_nodes = [node] * len(decoded)
        table: list[dict[str, Any]] = []
        for part in batches(decoded, self.batch_size, self.model.input_shape):
            table += rows(part, self.model(part.pixels), self.model.labels, self.k, self.probabilities)
        name = write_part(table, self.out, self.probabilities)
        nodes = Counter(f"decode {n}" for n in decode_nodes)
        nodes[f"classify {node}"] += len(table)
        return {"file": np.array([name]), "rows": np.array([len(table)]),
                "errors": np.array([sum(r["error"] is not None for r in table)]),
                "nodes": np.array([json.dumps(nodes)])}  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """How a job uses the cluster: `actors` classifying actors of `actor_cpus` CPUs (its session's threads)
    and `actor_gpus` GPUs each; `decode_tasks`: decoding runs in CPU tasks ahead of the actors."""

    actors: int
    actor_cpus: float
    actor_gpus: int
    decode_tasks: bool


def layout(
    cpus: int, gpus: int, actors: int | None = None, decode_tasks: bool | None = None, on_device: bool = False
) -> Layout:
    """Where GPUs exist, one actor a GPU and the CPUs decode in tasks (Ray's batch-inference layout); with the GPU
    preprocessing backend (`on_device`) each GPU's actor decodes its own files, on its GPU where it can and in
    threads on its share of the CPUs otherwise. On CPUs only, every core runs an actor that decodes and classifies:
    decoding is most of the work there, and an actor that decodes its own files saves each image a trip through the
    object store and each call a hand-off between two pools (bench/README.md, "On Ray Data", has both layouts'
    costs). `decode_tasks` forces the split on CPUs (tests)."""
    if gpus and on_device:
        pool = actors or gpus
        return Layout(pool, max(1, cpus // pool), 1, False)
    if gpus:
        return Layout(actors or gpus, 0, 1, True)
    pool = actors or max(cpus, 1)
    split = bool(decode_tasks)
    # the split layout's actor asks no CPU, as a GPU actor does: it leaves the cores to the decoding tasks, and
    # resources unlike theirs keep Ray from fusing the two steps into one
    return Layout(pool, 0 if split else cpus / pool if pool > cpus else cpus // pool, 0, split)


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


def ray_address(address: str | None) -> str | None:
    """`address`, else $RAY_ADDRESS, else None (start Ray here). Before Ray is first imported: for an address on
    this machine (or none), Ray is told to keep 127.0.0.1, which it otherwise swaps for the machine's network
    address when it resolves a node's (ray/_private/services.py, get_node_ip_address, reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import; ray 2.60): a job on this machine would then call a
    cluster listening on 127.0.0.1 at an address it does not listen on."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return address


def unreachable(address: str) -> str | None:
    """Why nothing can be joined at a HOST:PORT address (or ray://HOST:PORT), or None: something listens there, or
    the address is of another form (Ray resolves it)."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_PROBE_S).close()
    except OSError as e:
        return f"nothing answers at {host}:{port} ({e.strerror or e})"
    return None


def start_ray(address: str | None) -> None:
    """Join the cluster at `address` (ray_address's); without one, start Ray on this machine, on 127.0.0.1 and
    without its dashboard (nothing listens beyond this machine)."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        # "local": a new instance, never the cluster a `ray start` or an earlier test left recorded in /tmp/ray
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    else:
        why = unreachable(address)
        if why is not None:
            raise UserError(f"cannot join the Ray cluster at {address}: {why}")
        # a missing token is refused before any connection (ray.exceptions.AuthenticationError, Ray 2.59 and later)
        refused = (ConnectionError, getattr(ray.exceptions, "AuthenticationError", ConnectionError))
        try:
            ray.init(address=address, log_to_driver=False)
        except refused as e:
            # Ray 2.59-2.60: `ray start` turns token authentication on, a joining driver only with RAY_AUTH_MODE
            hint = "; a cluster that `ray start` began (Ray 2.59 or later) asks for its token: set RAY_AUTH_MODE=token"
            hint = "" if os.environ.get("RAY_AUTH_MODE") else hint
            raise UserError(f"cannot join the Ray cluster at {address}: {e}{hint}") from None


def gpus_in_cluster() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cpus_in_cluster() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


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
    decode_tasks: bool | None = None,
    preprocessing: str = "auto",
) -> BulkSummary:
    """Classify every image file of `inputs` on Ray Data and write Parquet parts into the folder `out`,
    skipping the paths parts already there hold. `actors`: the size of the classifying pool (default: one
    per GPU, or one per CPU on a cluster without GPUs); `decode_tasks`: see `layout`; `preprocessing`: where the
    pixels are made (service/preprocessing.py), `gpu` on the cluster's GPUs."""
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
    on_device = wanted(preprocessing, device)  # the rest is checked by each actor, on its node
    address = ray_address(address)
    try:
        import pyarrow  # noqa: F401
        import ray.data
    except ImportError:
        raise UserError("--ray needs Ray Data: pip install 'imgclf[bulk]' (ray[data] and pyarrow)") from None
    limits = limits or Limits()
    local = Model.load(model, voting, weights, "cpu")  # refuses a bad model here, before Ray starts
    out.mkdir(parents=True, exist_ok=True)
    todo = still_to_do(paths, out)
    summary = BulkSummary(0, 0, 0.0, str(out), skipped=len(paths) - len(todo))
    if todo:  # a rerun of a finished job answers at once: no Ray to start (its fixed cost is seconds)
        ray_start = time.perf_counter()
        start_ray(address)
        summary.startup_s = time.perf_counter() - ray_start
        gpus = gpus_in_cluster() if device != "cpu" else 0
        if device == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU; use --device auto or cpu")
        if on_device and not gpus:
            raise UserError("--preprocessing gpu: the Ray cluster has no GPU; use --preprocessing auto or host")
        plan = layout(cpus_in_cluster(), gpus, actors, decode_tasks, on_device)
        # a part is one actor call: at most rows_per_file rows, and at least 4 calls an actor, so that a small job
        # still spreads over every actor
        part = max(1, min(rows_per_file, -(-len(todo) // (4 * plan.actors))))
        # as bytes, which Arrow holds whatever the name: a name that is not UTF-8 is not text to it, and Ray fell
        # back to pickling the whole column (with a WARNING line)
        ds = ray.data.from_items([{"path": os.fsencode(p)} for p in todo], override_num_blocks=-(-len(todo) // part))
        if plan.decode_tasks:
            ds = ds.map_batches(decode_batch, fn_kwargs={"preprocess": local.preprocess, "limits": limits,
                                "shape": local.input_shape}, batch_size=DECODE_CHUNK, num_cpus=1)  # fmt: skip
        actor = (model, voting, weights, "cuda" if gpus else "cpu", batch_size, max(1, int(plan.actor_cpus)), top_k,
                 probabilities, str(out.absolute()), limits, "gpu" if on_device else "host")  # fmt: skip
        ds = ds.map_batches(
            Classify,
            fn_constructor_args=actor,
            batch_size=part,
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.actor_gpus,
            num_cpus=plan.actor_cpus,
        )
        for row in ds.iter_rows():
            summary.files += 1
            summary.unreadable += int(row["errors"])
            summary.classified += int(row["rows"]) - int(row["errors"])
            for key, n in json.loads(row["nodes"]).items():
                summary.nodes[key] = summary.nodes.get(key, 0) + n
    summary.seconds = time.perf_counter() - start
    return summary
