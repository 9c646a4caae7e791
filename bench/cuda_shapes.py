"""What a change of batch shape costs a session, and what the serving settings do about it.

    python -m bench.cuda_shapes --graph runs/serve_load/resnet50.onnx --device cuda    # bench/gpu_check.sh
    python -m bench.cuda_shapes --graph runs/serve_load/digits.onnx --device cpu --quick

For each setting, through `service.runtime.Graph` (the service's own call): the start-up warm-up, then
calls whose batch size changes every time (1, 3, 5, 7, 64, 3, 64, then 8 and 64 alternating), each timed,
then the steady images/s at batch 64. Settings: one session that sees every shape (the service before
fixed sizes), a session per fixed size with each cuDNN algorithm search, NHWC convolutions, CUDA graphs,
and the float16 graph when one is given. Writes bench/results/cuda_shapes.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_report

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE = [1, 3, 5, 7, 64, 3, 64] + [8, 64] * 4
SIZES = [1, 2, 4, 8, 16, 32, 64]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cuda_shapes", description=__doc__.split("\n")[0])
    p.add_argument("--graph", required=True, help="an exported graph (fp32)")
    p.add_argument("--fp16-graph", help="the same network exported with --fp16")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--seconds", type=float, default=2.0, help="steady-rate measurement per setting")
    p.add_argument("--quick", action="store_true", help="one setting of each kind, for a check on the CPU")
    p.add_argument("--out", default="bench/results/cuda_shapes")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, graph path, Graph keyword arguments) of every setting measured."""
    from service.config import CudaOptions

    out = [("one session, any shape (EXHAUSTIVE)", args.graph, {"sizes": None, "cuda": CudaOptions()})]
    searches = ["EXHAUSTIVE"] if args.quick else ["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]
    for search in searches:
        out.append((f"session per size ({search})", args.graph,
                    {"sizes": SIZES, "cuda": CudaOptions(cudnn_conv_algo_search=search)}))  # fmt: skip
    if args.device == "cuda":
        gpu_only = (("prefer_nhwc", CudaOptions(prefer_nhwc=True)), ("CUDA graphs", CudaOptions(cuda_graph=True)))
        for name, cuda in gpu_only:
            out.append((f"session per size, {name}", args.graph, {"sizes": SIZES, "cuda": cuda}))
    if args.fp16_graph:
        out.append(("fp16, session per size (EXHAUSTIVE)", args.fp16_graph, {"sizes": SIZES, "cuda": CudaOptions()}))
        if args.device == "cuda":
            out.append(("fp16, session per size, CUDA graphs", args.fp16_graph,
                        {"sizes": SIZES, "cuda": CudaOptions(cuda_graph=True)}))  # fmt: skip
    return out


def measure(graph, seconds: float) -> dict[str, Any]:
    crop = graph.input_shape[0]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    warmed = graph.warm()
    warm_s = time.perf_counter() - start
    calls = []
    for n in SEQUENCE:
        pixels = rng.integers(0, 256, (n, crop, crop, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        graph.run(pixels)
        calls.append(round(1000 * (time.perf_counter() - t0), 1))
    pixels = rng.integers(0, 256, (64, crop, crop, 3), dtype=np.uint8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        graph.run(pixels)
        n += 64
    return {"warm_s": round(warm_s, 2), "warmed_sizes": list(warmed), "calls_ms": calls,
            "steady_64_images_per_s": round(n / (time.perf_counter() - t0), 1)}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from service.runtime import Graph

    rows = []
    for name, path, kwargs in settings(args):
        try:
            graph = Graph(path, args.device, **kwargs)
            row = {"setting": name, **measure(graph, args.seconds)}
            del graph
        except Exception as e:  # one setting failing (e.g. CUDA graphs on a graph with CPU nodes) is a finding
            row = {"setting": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        gc.collect()
        print(row, flush=True)
        rows.append(row)
    lines = [
        "# Batch shape changes", "",
        f"Graph {Path(args.graph).name} on {args.device}; calls in the order {SEQUENCE} (ms each, after warm-up); "
        "steady images/s at batch 64.", "",
        "| setting | warm-up s | calls (ms) | steady img/s at 64 |", "|---|---:|---|---:|",
    ]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | - | {r['error']} | - |")
        else:
            calls = ", ".join(str(c) for c in r["calls_ms"])
            lines.append(f"| {r['setting']} | {r['warm_s']} | {calls} | {r['steady_64_images_per_s']} |")
    text = "\n".join(lines) + "\n"
    # bench.common imports no torch: this process loads only ONNX Runtime's CUDA libraries, as the service does
    write_report(ROOT / args.out, {"graph": args.graph, "device": args.device, "rows": rows}, text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    run(_parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
