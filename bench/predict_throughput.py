"""Images per second classifying a folder of 500x375 JPEGs with the digits graph, four ways, in one run.

    python -m bench.predict_throughput                              # trains a 1-epoch digits model first
    python -m bench.predict_throughput --checkpoint runs/digits-resnet18/best.pt --images 400

  (a) `python -m service.predict GRAPH FOLDER --out rows.csv`: decoding in spawned processes (one per core by
      default, and --workers as listed), the session in the main process; torch-free;
  (b) `python -m training pseudo-label CKPT --images FOLDER --out labels.csv --device cpu`: PyTorch, decoding
      in the main process (the DataLoader has no workers there);
  (c) one process that reads, decodes (service/decode.py) and calls the session (service/runtime.py) in a loop,
      64 images a call: what (a) does without its pool;
  (d) `python -m service.predict GRAPH FOLDER --out DIR --ray`: Ray Data on this machine (service/bulk.py; every
      core, decoding tasks, one classifying actor, Parquet parts), a fresh --out each run. Its own line states
      Ray's start-up; the per-batch overhead is (d)'s time after start-up less (a)'s own time (default workers),
      divided by the batches of --batch-size (skipped with --no-ray or without the bulk extra).

The photos are scikit-image's and scikit-learn's sample images, cropped and resized to 500x375 at random places
and saved as JPEG (quality 90); the graph takes 32x32, so decoding and resizing dominate, as they do for any
small model. The commands' figures are wall-clock from the command's start (interpreter and imports included)
to its end, the fastest of --repeats runs; (a) also prints its own rate from listing the files to the last row. Writes
bench/results/predict_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cli, write_report
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SIZE = (500, 375)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg",
                  "hubble_deep_field.jpg", "camera.png", "brick.png", "grass.png", "gravel.png")  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.predict_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=400, help="how many 500x375 JPEGs to classify")
    p.add_argument("--checkpoint", help="a digits checkpoint (default: train one epoch into --work)")
    p.add_argument("--work", default="runs/predict-bench", help="folder for the photos, the run and the graph")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="decoding processes for (a), one run each (besides the default, one per core)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="runs of each method; the fastest is reported")
    p.add_argument("--no-ray", action="store_true", help="leave out (d), the Ray Data path")
    p.add_argument("--out", default="bench/results/predict_throughput", help="writes <out>.json and <out>.md")
    return p.parse_args(argv)


def make_photos(folder: Path, count: int) -> list[Path]:
    """`count` JPEGs of 500x375 cut from the sample photos at random places and scales (seed 0); reused, and
    only the missing ones made (a folder may start as links to a smaller one's files)."""
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_image

    paths = [folder / f"{i:04d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    skimage_dir = Path(skimage.__file__).parent / "data"
    sources = [Image.open(skimage_dir / name).convert("RGB") for name in SKIMAGE_PHOTOS]
    sources += [Image.fromarray(load_sample_image(name)) for name in SKLEARN_PHOTOS]
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        source = sources[i % len(sources)]
        # a random window with the 4:3 shape of the target, between half and all of the photo's height or width
        scale = rng.uniform(0.5, 1.0)
        w = int(min(source.width, source.height * 4 / 3) * scale)
        h = int(w * 3 / 4)
        left, top = rng.integers(0, source.width - w + 1), rng.integers(0, source.height - h + 1)
        if path.exists():  # the draws above still ran: file i is the same in every folder of this seed
            continue
        source.crop((left, top, left + w, top + h)).resize(SIZE, Image.Resampling.BICUBIC).save(path, quality=90)
    return paths


def run(cmd: list[str], log: Path) -> tuple[float, str]:
    """Runs `cmd` at the repository root; (wall seconds, its stdout). A failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log}")
    return seconds, done.stdout


def prepared_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise UserError(f"checkpoint not found: {args.checkpoint}")
        return Path(args.checkpoint)
    out = work / "digits-1epoch"
    if not (out / "best.pt").exists():
        print("training a 1-epoch digits model ...", flush=True)
        run([sys.executable, "-m", "training", "fit", "--config", "configs/digits_resnet18.yaml", "--out", str(out),
             "--set", "train.epochs=1"], work / "fit.log")  # fmt: skip
    return out / "best.pt"


def in_one_process(graph_path: Path, paths: list[Path], batch_size: int) -> float:
    """(c): read, decode and run the session in a loop; seconds from loading the graph to the last batch."""
    from core import metadata
    from service.config import Limits
    from service.decode import decode
    from service.runtime import Graph

    start = time.perf_counter()
    graph = Graph(graph_path, "cpu")
    preprocess, limits = metadata.preprocess_of(graph.meta), Limits()
    batch = []
    for i, path in enumerate(paths):
        batch.append(decode(path.read_bytes(), i, limits, preprocess))
        if len(batch) == batch_size or i == len(paths) - 1:
            graph.run(np.stack(batch))
            batch = []
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> None:
    work = ROOT / args.work if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_photos(work / "photos", args.images)
    checkpoint = prepared_checkpoint(args, work)
    graph = work / "digits.onnx"
    if not graph.exists() or graph.stat().st_mtime < checkpoint.stat().st_mtime:
        run([sys.executable, "-m", "export", str(checkpoint), "--out", str(graph), "--verify-images", "32"],
            work / "export.log")  # fmt: skip
    n = len(paths)
    results: list[dict[str, Any]] = []

    def record(name: str, measure: Any) -> None:
        """The fastest of --repeats runs of `measure()` -> (seconds, (a)'s own images/s or None); every run kept."""
        runs = [measure() for _ in range(args.repeats)]
        seconds, own = min(runs)
        rate = round(n / seconds, 1)
        results.append({"method": name, "images": n, "seconds": round(seconds, 2), "images_per_s": rate,
                        "own_images_per_s": own, "all_seconds": [round(s, 2) for s, _ in runs]})  # fmt: skip
        print(f"{name}: {rate} images/s ({seconds:.1f} s; runs {[round(s, 1) for s, _ in runs]})", flush=True)

    def predict(flag: list[str]) -> tuple[float, float | None]:
        seconds, out = run([sys.executable, "-m", "service.predict", str(graph), str(work / "photos"), "--out",
                            str(work / "rows.csv"), "--batch-size", str(args.batch_size), *flag],
                           work / "predict.log")  # fmt: skip
        own = re.search(r"([\d.]+) images/s", out)
        return seconds, own and float(own.group(1))

    def pseudo_label() -> tuple[float, None]:
        return run([sys.executable, "-m", "training", "pseudo-label", str(checkpoint), "--images",
                    str(work / "photos"), "--out", str(work / "labels.csv"), "--device", "cpu", "--batch-size",
                    str(args.batch_size)], work / "pseudo-label.log")[0], None  # fmt: skip

    for workers in [None, *args.workers]:
        label = "default: one per core" if workers is None else str(workers)
        flag = [] if workers is None else ["--workers", str(workers)]
        record(f"(a) service.predict, --workers {label}", lambda flag=flag: predict(flag))
    record("(b) training pseudo-label (PyTorch)", pseudo_label)
    record("(c) one process: decode + session loop", lambda: (in_one_process(graph, paths, args.batch_size), None))

    ray_figures: dict[str, float] = {}
    if not args.no_ray:

        def on_ray() -> tuple[float, float | None]:
            shutil.rmtree(work / "parts", ignore_errors=True)  # a fresh --out: a rerun would skip every image
            seconds, out = run([sys.executable, "-m", "service.predict", str(graph), str(work / "photos"), "--out",
                                str(work / "parts"), "--batch-size", str(args.batch_size), "--ray"],
                               work / "ray.log")  # fmt: skip
            own = re.search(r"([\d.]+) images/s \(([\d.]+) s\).*Ray start-up ([\d.]+) s", out)
            ray_runs.append((seconds, float(own.group(2)), float(own.group(3))))
            return seconds, float(own.group(1))

        ray_runs: list[tuple[float, float, float]] = []
        record("(d) service.predict --ray (Ray Data, this machine)", on_ray)
        _, own_seconds, startup = min(ray_runs)
        a_own = next(r for r in results if r["method"].startswith("(a)"))["own_images_per_s"]
        batches = -(-n // args.batch_size)
        per_batch = ((own_seconds - startup) - n / a_own) / batches
        ray_figures = {"ray_startup_s": round(startup, 2), "ray_job_s_after_startup": round(own_seconds - startup, 2),
                       "ray_overhead_per_batch_ms": round(1000 * per_batch, 1)}  # fmt: skip
        print(
            f"(d) Ray start-up {startup:.1f} s; overhead per batch of {args.batch_size} against (a): "
            f"{1000 * per_batch:.1f} ms",
            flush=True,
        )

    cores = len(os.sched_getaffinity(0))
    settings = {"images": n, "image_size": list(SIZE), "format": "JPEG q90", "graph": "digits ResNet-18, 32x32",
                "batch_size": args.batch_size, "cores": cores, "machine": platform.processor() or platform.machine(),
                "python": platform.python_version()}  # fmt: skip
    lines = [
        "# Classifying a folder without a server (bench/predict_throughput.py)",
        "",
        f"{n} JPEGs of 500x375, digits ResNet-18 graph (32x32 input), batch {args.batch_size}, "
        f"{cores} cores ({settings['machine']}), Python {settings['python']}. Wall clock of each command, start-up "
        f"included, the fastest of {args.repeats} runs (the machine is shared); (a)'s own figure counts from listing "
        "the files to the last row.",
        "",
        "| method | images/s | seconds | (a)'s own images/s |",
        "|---|---:|---:|---:|",
        *[
            f"| {r['method']} | {r['images_per_s']} | {r['seconds']} | {r.get('own_images_per_s') or ''} |"
            for r in results
        ],
        "",
    ]
    if ray_figures:
        lines += [f"(d): Ray start-up {ray_figures['ray_startup_s']} s; the job after it "
                  f"{ray_figures['ray_job_s_after_startup']} s; overhead per batch of {args.batch_size} against (a)'s "
                  f"own time: {ray_figures['ray_overhead_per_batch_ms']} ms.", ""]  # fmt: skip
    write_report(args.out, {"settings": settings, "results": results, **ray_figures}, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return cli(measure, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
