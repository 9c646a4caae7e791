"""Inference images/s of exported ONNX graphs in ONNX Runtime against the same network in PyTorch.

Both sides take the graph's own input, uint8 RGB pixels [B, crop, crop, 3] from a fixed seed that sit
in host memory, and return float32 probabilities in host memory: the PyTorch side is
`export.graph.PixelClassifier` (cast, normalize, NHWC -> NCHW, network, softmax) around the
checkpoint's network, so each timed call includes the same preprocessing and, on a GPU, the same
host-to-device and device-to-host copies. On a CPU, ONNX Runtime gets as many intra-op threads as
torch uses; an fp16 graph is still compared with an fp32 PyTorch network there (CPUs have no fast
float16 path in PyTorch), which the output says.

The PyTorch counterpart of a graph is the `--checkpoint` whose sha256 equals the graph's
`source_sha256` metadata; a graph without one (or any graph when no `--checkpoint` is given, or an
ensemble) is timed in ONNX Runtime only, and the reason is printed.

Examples:

    # export a run, then compare the graph with its checkpoint
    python -m export runs/x/best.pt --out models/x.onnx
    python -m bench.export_latency models/x.onnx --checkpoint runs/x/best.pt

    # fp32 and fp16 graphs of one run, and a second run, on a GPU; reports in bench/results/h100.{json,md}
    python -m export runs/x/best.pt --out models/x_fp16.onnx --fp16
    python -m bench.export_latency models/x.onnx models/x_fp16.onnx models/y.onnx \\
        --checkpoint runs/x/best.pt runs/y/best.pt --device cuda --batch 1 8 32 128 --out bench/results/h100

    # ONNX Runtime only, quick
    python -m bench.export_latency models/x.onnx --iters 5 --warmup 1

Writes `<out>.json` (settings plus one dict per model and batch size) and `<out>.md` (the same table
as stdout). Figures from different machines, or from a machine that is busy with something else, are
not comparable.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.common import cli, device_name, sync, write_report
from core import metadata
from core.errors import UserError
from core.metadata import sha256_of
from export.graph import PixelClassifier
from training import checkpoint as ckpt
from training.distributed import resolve_device
from training.models import model_from_checkpoint

DEFAULT_BATCHES = [1, 8, 32]
SEED = 0


def time_calls(call: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of `iters` calls after `warmup` untimed ones (CUDA synchronized around each)."""
    for _ in range(warmup):
        call()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float], batch: int) -> dict[str, float]:
    """images/s over all timed calls, mean / p50 / p90 milliseconds per batch."""
    ms = np.asarray(times) * 1000.0
    return {
        "images_per_s": round(batch * len(times) / sum(times), 2),
        "mean_ms": round(float(statistics.fmean(ms)), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
    }


def ort_session(path: Path, device: torch.device) -> ort.InferenceSession:
    """CUDA provider first on a GPU (refused if ONNX Runtime cannot use it), the CPU provider otherwise."""
    options = ort.SessionOptions()
    if device.type == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
        options.intra_op_num_threads = torch.get_num_threads()  # the same thread count as the PyTorch side
    try:
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # noqa: BLE001 - protobuf errors, unsupported ops: the same to the user
        raise UserError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from None
    if device.type == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise UserError(
            f"ONNX Runtime {ort.__version__} did not enable CUDAExecutionProvider for {path} (it runs on "
            f"{', '.join(sess.get_providers())}; available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu matching the CUDA here, or use --device cpu"
        )
    return sess


def graph_metadata(sess: ort.InferenceSession, path: Path) -> dict[str, Any]:
    try:
        return metadata.decode(sess.get_modelmeta().custom_metadata_map)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def match_checkpoints(metas: list[dict[str, Any]], paths: list[Path], checkpoints: list[str]) -> list[Path | None]:
    """The checkpoint of each graph, by sha256 of the file against the graph's `source_sha256`.

    Every given checkpoint must be the source of at least one graph; graphs without one get None.
    """
    by_sha: dict[str, Path] = {}
    for name in checkpoints:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path}")
        by_sha.setdefault(sha256_of(path), path)
    sources = [m["source_sha256"] for m in metas]
    for sha, path in by_sha.items():
        if sha not in sources:
            graphs = ", ".join(f"{p.name} {s[:12]}" for p, s in zip(paths, sources))
            raise UserError(
                f"--checkpoint {path} (sha256 {sha[:12]}) is the source of none of the graphs (source_sha256: "
                f"{graphs}); was it retrained or rewritten after the export?"
            )
    return [by_sha.get(sha) for sha in sources]


def precision_of(meta: dict[str, Any]) -> str:
    """fp32 / fp16 of a graph; an ensemble's member precisions joined by `+` when they differ."""
    if "precision" in meta:
        return meta["precision"]
    members = sorted({m.get("precision") or "fp32" for m in meta.get("members", [])})
    return "+".join(members) or "fp32"


def torch_model(checkpoint: dict[str, Any], meta: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, str]:
    """The graph's network as a `PixelClassifier` on `device` in eval mode; returns it and its precision."""
    weights = meta.get("weights", "best")  # a name for single graphs (an ensemble's are member weights)
    weights = weights if isinstance(weights, str) else "best"
    fp16 = meta.get("precision") == "fp16" and device.type == "cuda"
    pre = checkpoint["preprocess"]
    model = PixelClassifier(model_from_checkpoint(checkpoint, weights), pre["mean"], pre["std"], fp16=fp16)
    return model.to(device).eval(), "fp16" if fp16 else "fp32"


def bench_model(
    path: Path,
    meta: dict[str, Any],
    checkpoint_path: Path | None,
    skip_reason: str | None,
    device: torch.device,
    batches: list[int],
    iters: int,
    warmup: int,
    checkpoints: dict[Path, dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Time one graph (and its PyTorch counterpart when there is one) at every batch size.

    Returns the model's summary and one result row per batch size.
    """
    start = time.perf_counter()
    sess = ort_session(path, device)
    session_s = time.perf_counter() - start
    crop = int(meta["crop_size"])
    precision = precision_of(meta)
    input_name = sess.get_inputs()[0].name
    fixed_batch = sess.get_inputs()[0].shape[0]
    if isinstance(fixed_batch, int) and any(b != fixed_batch for b in batches):
        raise UserError(f"{path} has a fixed batch size of {fixed_batch}; run it with --batch {fixed_batch}")

    model, torch_precision, torch_setup_s = None, None, None
    if checkpoint_path is not None:
        start = time.perf_counter()
        if checkpoint_path not in checkpoints:
            checkpoints[checkpoint_path] = ckpt.load(checkpoint_path)
        model, torch_precision = torch_model(checkpoints[checkpoint_path], meta, device)
        torch_setup_s = round(time.perf_counter() - start, 3)
    note = None
    if model is not None and precision == "fp16" and torch_precision == "fp32":
        note = "fp16 graph, PyTorch side in fp32 (CPU)"
    summary = {
        "model": path.name,
        "path": str(path),
        "arch": meta["arch"],
        "precision": precision,
        "source_sha256": meta["source_sha256"],
        "crop_size": crop,
        "ort_providers": sess.get_providers(),
        "ort_session_s": round(session_s, 3),
        "checkpoint": None if checkpoint_path is None else str(checkpoint_path),
        "torch_precision": torch_precision,
        "torch_setup_s": torch_setup_s,
        "torch_skipped": skip_reason if model is None else None,
        "note": note,
    }
    print(f"{path.name}: {meta['arch']} {precision}, {crop}x{crop}, ONNX Runtime session {session_s:.2f}s "
          f"on {', '.join(sess.get_providers())}", flush=True)  # fmt: skip
    if model is None:
        print(f"  PyTorch skipped: {skip_reason}", flush=True)
    else:
        print(f"  PyTorch: {checkpoint_path} in {torch_precision}, set up in {torch_setup_s:.2f}s", flush=True)
        if note:
            print(f"  note: {note}", flush=True)

    rng = np.random.default_rng(SEED)
    rows = []
    for batch in batches:
        pixels = rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
        ort_times = time_calls(lambda p=pixels: sess.run(["probabilities"], {input_name: p}), iters, warmup, device)
        row = {"model": path.name, "precision": precision, "batch": batch, "ort": summarize(ort_times, batch)}
        row["torch"] = None
        if model is not None:
            with torch.inference_mode():

                def torch_call(p: np.ndarray = pixels) -> np.ndarray:
                    return model(torch.from_numpy(p).to(device)).cpu().numpy()

                row["torch"] = summarize(time_calls(torch_call, iters, warmup, device), batch)
        row["ratio"] = None if row["torch"] is None else round(
            row["ort"]["images_per_s"] / row["torch"]["images_per_s"], 3
        )  # fmt: skip
        torch_text = "" if row["torch"] is None else f", PyTorch {row['torch']['images_per_s']:.1f}"
        print(f"  batch {batch}: ONNX Runtime {row['ort']['images_per_s']:.1f}{torch_text} images/s", flush=True)
        rows.append(row)
    return summary, rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The result rows as a markdown table."""
    lines = [
        "| model | precision | batch | ORT img/s | PyTorch img/s | ORT/PyTorch | ORT p50 ms | PyTorch p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ort_r, torch_r = r["ort"], r["torch"]
        torch_ips = "-" if torch_r is None else f"{torch_r['images_per_s']:.1f}"
        torch_p50 = "-" if torch_r is None else f"{torch_r['p50_ms']:.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {ort_r['images_per_s']:.1f} | {torch_ips} | "
            f"{ratio} | {ort_r['p50_ms']:.2f} | {torch_p50} |"
        )
    return "\n".join(lines)


def settings_line(settings: dict[str, Any]) -> str:
    return (
        f"batch {' '.join(str(b) for b in settings['batch'])}, {settings['iters']} timed calls "
        f"(warmup {settings['warmup']}) per batch size, uint8 input from seed {settings['seed']}, "
        "host memory in and out"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.export_latency",
        description="ONNX Runtime against PyTorch images/s of exported graphs, per batch size.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL.onnx", help="graphs written by `python -m export`")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="source checkpoints, matched to the graphs by sha256 (metadata source_sha256); without one a graph "
        "is timed in ONNX Runtime only",
    )
    p.add_argument("--batch", type=int, nargs="+", default=DEFAULT_BATCHES, help="batch sizes")
    p.add_argument("--iters", type=int, default=20, help="timed calls per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before the clock starts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", default="bench/results/export_latency", help="writes <out>.json and <out>.md")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark every graph, print the table and write the reports; returns the JSON report."""
    for name, value, low in (("iters", args.iters, 1), ("warmup", args.warmup, 0)):
        if value < low:
            raise UserError(f"--{name} must be at least {low}, got {value}")
    if min(args.batch) < 1:
        raise UserError(f"--batch sizes must be at least 1, got {args.batch}")
    paths = [Path(m) for m in args.models]
    for path in paths:
        if not path.is_file():
            raise UserError(f"ONNX model not found: {path}")
    device = resolve_device(args.device)

    # metadata first (cheap, CPU provider) so that a checkpoint matching no graph fails before any timing
    metas = [graph_metadata(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]), p) for p in paths]
    matched = match_checkpoints(metas, paths, args.checkpoint) if args.checkpoint else [None] * len(paths)
    reasons = []
    for meta, match in zip(metas, matched):
        if meta["arch"] == "ensemble":
            reasons.append("an ensemble graph has no single PyTorch checkpoint")
        elif not args.checkpoint:
            reasons.append("no --checkpoint given")
        elif match is None:
            reasons.append(f"no --checkpoint has sha256 {meta['source_sha256'][:12]} (the graph's source_sha256)")
        else:
            reasons.append(None)
    matched = [None if r else m for r, m in zip(reasons, matched)]

    torch.manual_seed(SEED)
    settings = {
        "device": str(device),
        "device_name": device_name(device),
        "num_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
        "batch": list(args.batch),
        "iters": args.iters,
        "warmup": args.warmup,
        "seed": SEED,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    header = f"{settings['device_name']} [{device}], onnxruntime {ort.__version__}, torch {torch.__version__}"
    print(f"device: {header}")
    print(f"settings: {settings_line(settings)}", flush=True)

    models, rows = [], []
    checkpoints: dict[Path, dict[str, Any]] = {}
    for path, meta, match, reason in zip(paths, metas, matched, reasons):
        summary, model_rows = bench_model(
            path, meta, match, reason, device, args.batch, args.iters, args.warmup, checkpoints
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model is gone; start the next one from an empty cache
        models.append(summary)
        rows.extend(model_rows)
    table = markdown_table(rows)
    notes = [f"{m['model']}: {m['note']}" for m in models if m["note"]]
    notes += [f"{m['model']}: PyTorch skipped, {m['torch_skipped']}" for m in models if m["torch_skipped"]]
    print()
    print(table)
    for line in notes:
        print(f"- {line}")

    report = {"settings": settings, "models": models, "results": rows}
    session_lines = [f"- {m['model']}: ONNX Runtime session created in {m['ort_session_s']:.2f}s" for m in models]
    write_report(
        args.out,
        report,
        f"# ONNX Runtime vs PyTorch inference on {header}\n\n"
        f"{settings_line(settings)}; {settings['time']}\n\n"
        f"{table}\n\n" + "\n".join(session_lines + [f"- {line}" for line in notes]) + "\n",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return cli(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
