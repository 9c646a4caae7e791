"""Bulk classification on Ray Data (service/bulk.py) against the local paths: where Ray's cost goes, one run each.

    python -m bench.bulk_scaling                          # every part
    python -m bench.bulk_scaling --parts decode --decode-images 20000
    python -m bench.bulk_scaling --parts compute --images 500
    python -m bench.bulk_scaling --parts cluster overhead --images 1000

  decode: the issue's decode-bound targets, on the digits graph over `--decode-images` JPEGs: `service.predict
      --ray` starting Ray on this machine, and again on a Ray already running here (ray.cluster_utils, 127.0.0.1),
      against `training pseudo-label`, one process decoding and calling the session in a loop, the local
      `service.predict`, and the decode limit (decoding alone, one process per core);
  compute: a ResNet-18 graph at 224 (random weights: the speed does not depend on them) over 500x375 JPEGs:
      `service.predict --ray` (Ray on this machine) against the model-only rate of the same graph on the same
      cores (`Graph.run` on random batches), `training pseudo-label`, `service.predict` (the local path) and one
      process decoding and calling the session in a loop;
  cluster: the digits graph (decode-bound) on a Ray cluster of two nodes on this machine (ray.cluster_utils, one
      CPU each, 127.0.0.1) against one node with both CPUs, the same `service.predict --ray ADDRESS` job;
  overhead: Ray's start-up and its cost per batch: `--ray`, `service.predict` and the loop on the digits graph at
      two sizes; each job's time is fitted as a + b x images, so a user can tell from what number of images Ray
      pays (-1: never, on that many machines of these cores).

Every command is timed by wall clock from its start to its end; `service.predict --ray` also prints its own
start-up. The load average (os.getloadavg) is recorded with each figure: the machine may be shared. Writes
bench/results/bulk_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cli, write_report
from bench.predict_throughput import ROOT, in_one_process, make_photos, prepared_checkpoint, run

PARTS = ("decode", "compute", "cluster", "overhead")
SUMMARY = re.compile(r"([\d.]+) images/s \(([\d.]+) s\).*Ray start-up ([\d.]+) s; decoded on (\d+) node\(s\), "
                     r"classified on (\d+)")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bulk_scaling", description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--images", type=int, default=500, help="500x375 JPEGs for compute and cluster")
    p.add_argument("--decode-images", type=int, default=20000, help="500x375 JPEGs for decode")
    p.add_argument("--sizes", type=int, nargs=2, default=[200, 1000], help="the two job sizes of overhead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--checkpoint", help="a digits checkpoint (default: train one epoch, as predict_throughput does)")
    p.add_argument("--work", default="runs/bulk-bench", help="folder for the photos, graphs and outputs")
    p.add_argument("--out", default="bench/results/bulk_scaling", help="writes <out>.json and <out>.md")
    return p.parse_args(argv)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def resnet18_224(work: Path) -> tuple[Path, Path]:
    """A random-weight ResNet-18 checkpoint at 224 (1000 classes) and its ONNX graph, made once."""
    source, graph = work / "resnet18-224.pt", work / "resnet18-224.onnx"
    if graph.exists():
        return source, graph
    import torch

    from export.graph import export_onnx
    from training import checkpoint as ckpt
    from training.checkpoint import checkpoint_dict
    from training.config import load_config
    from training.models import build_model

    torch.manual_seed(0)
    config = load_config(None, {"model.arch": "resnet18", "preprocess.crop_size": 224, "preprocess.resize_size": 256})
    model, preprocess, _ = build_model(config["model"], 1000, config["preprocess"])
    ckpt.save(checkpoint_dict(model, None, [f"class{i}" for i in range(1000)], preprocess, config, {}), source)
    export_onnx(ckpt.load(source), source, graph)
    return source, graph


def model_only(graph: Path, batch_size: int, images: int) -> float:
    """images/s of the service's own session call on random batches: what the cores can do for the model alone."""
    from service.runtime import Graph

    g = Graph(graph, "cpu")
    crop = g.input_shape[0]
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, crop, crop, 3), dtype=np.uint8)
    g.run(pixels)
    start, done = time.perf_counter(), 0
    while done < images:
        g.run(pixels)
        done += batch_size
    return done / (time.perf_counter() - start)


def decode_only(paths: list[Path], preprocess: dict, cores: int) -> float:
    """Seconds to decode every file and nothing else, in one process per core (the local path's decoding)."""
    from service.decode import decoding_processes
    from service.files import decode_files

    start = time.perf_counter()
    with decoding_processes(cores) as pool:
        for _ in decode_files(paths, preprocess, pool=pool, chunk=64):
            pass
    return time.perf_counter() - start


class RunningRay:
    """A Ray head with `cpus` CPUs on 127.0.0.1 (ray.cluster_utils), started before the timed job: what a user
    who keeps Ray running between jobs (`ray start --head`) pays per job."""

    def __init__(self, cpus: list[int]):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (service/bulk.py, start_ray)
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus[0], "include_dashboard": False,
                                                                     "node_ip_address": "127.0.0.1"})  # fmt: skip
        for n in cpus[1:]:
            self.cluster.add_node(num_cpus=n, node_ip_address="127.0.0.1")
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def __enter__(self) -> RunningRay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.shutdown()


def on_ray(graph: Path, photos: Path, out: Path, batch_size: int, address: str = "", log: Path | None = None) -> dict:
    """`service.predict GRAPH PHOTOS --ray [ADDRESS]` into a fresh `out`: wall seconds and its own summary."""
    shutil.rmtree(out, ignore_errors=True)  # a rerun into the same folder would skip every image
    cmd = [sys.executable, "-m", "service.predict", str(graph), str(photos), "--out", str(out), "--batch-size",
           str(batch_size), "--ray", *([address] if address else [])]  # fmt: skip
    seconds, stdout = run(cmd, log or out.with_suffix(".log"))
    m = SUMMARY.search(stdout)
    if m is None:
        raise RuntimeError(f"no summary line in: {stdout[-500:]}")
    own, own_s, startup, decoders, classifiers = m.groups()
    return {"seconds": round(seconds, 2), "own_images_per_s": float(own), "own_seconds": float(own_s),
            "startup_s": float(startup), "decode_nodes": int(decoders), "classify_nodes": int(classifiers),
            "load": load()}  # fmt: skip


def figure(results: list[dict], part: str, method: str, images: int, seconds: float, **extra: Any) -> None:
    row = {"part": part, "method": method, "images": images, "seconds": round(seconds, 2),
           "images_per_s": round(images / seconds, 1), "load": load(), **extra}  # fmt: skip
    results.append(row)
    print(f"[{part}] {method}: {row['images_per_s']} images/s ({seconds:.1f} s; load {row['load']})", flush=True)


def compute(args: argparse.Namespace, work: Path, results: list[dict]) -> None:
    photos = work / f"photos-{args.images}"
    paths = make_photos(photos, args.images)
    source, graph = resnet18_224(work)
    n = len(paths)
    part = "compute"
    rate = model_only(graph, args.batch_size, n)
    figure(results, part, f"model only: Graph.run, random batches of {args.batch_size}", n, n / rate)
    figure(results, part, "one process: decode + session loop", n, in_one_process(graph, paths, args.batch_size))
    predict = [sys.executable, "-m", "service.predict", str(graph), str(photos), "--out", str(work / "rows.csv"),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    figure(results, part, "service.predict (decoding processes, one per core)", n, run(predict, work / "p.log")[0])
    label = [sys.executable, "-m", "training", "pseudo-label", str(source), "--images", str(photos), "--out",
             str(work / "labels.csv"), "--device", "cpu", "--batch-size", str(args.batch_size)]  # fmt: skip
    figure(results, part, "training pseudo-label (PyTorch)", n, run(label, work / "pl.log")[0])
    ray = on_ray(graph, photos, work / "parts-compute", args.batch_size)
    figure(results, part, "service.predict --ray (this machine)", n, ray["seconds"], ray=ray)


def cluster(args: argparse.Namespace, work: Path, graph: Path, results: list[dict]) -> None:
    """The same job on one node with 2 CPUs, then on two nodes of one CPU each, every node on 127.0.0.1."""
    photos = work / f"photos-{args.images}"
    n = len(make_photos(photos, args.images))
    for name, nodes in (("one node, 2 CPUs", [2]), ("two nodes, 1 CPU each", [1, 1])):
        with RunningRay(nodes) as running:
            ray = on_ray(graph, photos, work / f"parts-{len(nodes)}", args.batch_size, running.address)
        figure(results, "cluster", f"service.predict --ray ADDRESS, {name}", n, ray["seconds"], ray=ray)


def decode_bound(args: argparse.Namespace, work: Path, graph: Path, checkpoint: Path, results: list[dict]) -> dict:
    """The issue's decode-bound targets at one job size: Ray (started by the job, and already running) against
    the local ways, each ratio from this one run."""
    from core import metadata
    from service.runtime import Graph

    n, part, cores = args.decode_images, "decode", len(os.sched_getaffinity(0))
    photos = work / f"photos-{n}"
    paths = make_photos(photos, n)
    seconds: dict[str, float] = {}

    def timed(key: str, method: str, s: float, **extra: Any) -> None:
        seconds[key] = s
        figure(results, part, method, n, s, **extra)

    preprocess = metadata.preprocess_of(Graph(graph, "cpu").meta)
    timed("decode", f"decode limit: decoding alone, {cores} processes", decode_only(paths, preprocess, cores))
    timed("model", f"model only: Graph.run, random batches of {args.batch_size}",
          n / model_only(graph, args.batch_size, n))  # fmt: skip
    timed("loop", "one process: decode + session loop", in_one_process(graph, paths, args.batch_size))
    predict = [sys.executable, "-m", "service.predict", str(graph), str(photos), "--out", str(work / "rows.csv"),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    timed("predict", "service.predict (local)", run(predict, work / "p.log")[0])
    label = [sys.executable, "-m", "training", "pseudo-label", str(checkpoint), "--images", str(photos), "--out",
             str(work / "labels.csv"), "--device", "cpu", "--batch-size", str(args.batch_size)]  # fmt: skip
    timed("pseudo_label", "training pseudo-label (PyTorch)", run(label, work / "pl.log")[0])
    ray = on_ray(graph, photos, work / "parts-decode", args.batch_size)
    timed("ray", "service.predict --ray (starts Ray)", ray["seconds"], ray=ray)
    with RunningRay([cores]) as running:
        warm = on_ray(graph, photos, work / "parts-decode", args.batch_size, running.address)
    timed("ray_running", "service.predict --ray ADDRESS (Ray already running)", warm["seconds"], ray=warm)
    figures = {}
    for key in ("ray", "ray_running"):
        for base in ("pseudo_label", "loop", "predict", "decode"):
            figures[f"{key}_over_{base}"] = round(seconds[base] / seconds[key], 2)
    return figures


def overhead(args: argparse.Namespace, work: Path, graph: Path, results: list[dict]) -> dict[str, float]:
    """Ray's start-up, and its fixed and per-image costs against the local paths', from two job sizes here: each
    job's time is a + b x images, fitted through the two sizes (b: the marginal cost, in which fixed costs cancel)."""
    times: dict[str, list[float]] = {"loop": [], "predict": [], "ray": []}
    startups = []
    for size in args.sizes:
        photos = work / f"photos-{size}"
        paths = make_photos(photos, size)
        loop_s = in_one_process(graph, paths, args.batch_size)
        figure(results, "overhead", f"one process: decode + session loop, {size} images", size, loop_s)
        predict = [sys.executable, "-m", "service.predict", str(graph), str(photos), "--out", str(work / "rows.csv"),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
        predict_s = run(predict, work / "p.log")[0]
        figure(results, "overhead", f"service.predict (local), {size} images", size, predict_s)
        ray = on_ray(graph, photos, work / f"parts-{size}", args.batch_size)
        figure(results, "overhead", f"service.predict --ray, {size} images", size, ray["seconds"], ray=ray)
        times["loop"].append(loop_s)
        times["predict"].append(predict_s)
        times["ray"].append(ray["seconds"])
        startups.append(ray["startup_s"])
    small, large = args.sizes
    fit = {}
    for name, (t0, t1) in times.items():
        per_image = (t1 - t0) / (large - small)
        fit[name] = (t1 - per_image * large, per_image)  # (fixed seconds, seconds per image)
    (ray_fixed, ray_b), (local_fixed, local_b) = fit["ray"], fit["predict"]
    figures = {"ray_startup_s": round(min(startups), 2)}
    for name, (fixed, per_image) in fit.items():
        figures[f"{name}_fixed_s"] = round(fixed, 2)
        figures[f"{name}_ms_per_image"] = round(1000 * per_image, 3)
    figures["ray_overhead_per_batch_ms"] = round(1000 * (ray_b - local_b) * args.batch_size, 1)
    # Ray pays once its lower cost per image has made up its larger fixed cost; with k machines of these cores, its
    # cost per image is divided by k (the local path cannot use them)
    for k in (1, 2, 4):
        gain = local_b - ray_b / k
        figures[f"ray_pays_from_images_on_{k}_machines"] = round((ray_fixed - local_fixed) / gain) if gain > 0 else -1
    return figures


def measure(args: argparse.Namespace) -> None:
    work = Path(args.work) if Path(args.work).is_absolute() else ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    figures: dict[str, float] = {}
    digits = work / "digits.onnx"
    if {"decode", "cluster", "overhead"} & set(args.parts):
        checkpoint = prepared_checkpoint(args, work)
        if not digits.exists():
            run([sys.executable, "-m", "export", str(checkpoint), "--out", str(digits)], work / "export.log")
    if "decode" in args.parts:
        figures.update(decode_bound(args, work, digits, checkpoint, results))
        print(f"[decode] {figures}", flush=True)
    if "compute" in args.parts:
        compute(args, work, results)
    if "cluster" in args.parts:
        cluster(args, work, digits, results)
    if "overhead" in args.parts:
        fitted = overhead(args, work, digits, results)
        figures.update(fitted)
        print(f"[overhead] {fitted}", flush=True)
    cores = len(os.sched_getaffinity(0))
    settings = {"images": args.images, "decode_images": args.decode_images, "sizes": args.sizes,
                "batch_size": args.batch_size, "cores": cores,
                "machine": platform.processor() or platform.machine(), "python": platform.python_version()}  # fmt: skip
    lines = ["# Bulk classification on Ray Data against the local paths (bench/bulk_scaling.py)", "",
             f"500x375 JPEGs, batch {args.batch_size}, {cores} cores, Python {settings['python']}; one run each, wall "
             "clock of each command; load average (1, 5, 15 min) when each figure was taken.", "",
             "| part | method | images | images/s | seconds | Ray start-up s | nodes (decode / classify) | load |",
             "|---|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in results:
        ray = r.get("ray") or {}
        nodes = f"{ray['decode_nodes']} / {ray['classify_nodes']}" if ray else ""
        lines.append(f"| {r['part']} | {r['method']} | {r['images']} | {r['images_per_s']} | {r['seconds']} | "
                     f"{ray.get('startup_s', '')} | {nodes} | {r['load']} |")  # fmt: skip
    if figures:
        lines += ["", f"figures: {figures}"]
    write_report(args.out, {"settings": settings, "results": results, **figures}, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    return cli(measure, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
