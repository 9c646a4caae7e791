"""Serving load test: the BentoML service against the in-process ceiling and a hand-written endpoint.

    python -m bench.serve_load                         # digits ResNet-18, ResNet-50, EfficientNetV2-S
    python -m bench.serve_load --models digits --concurrency 1 16 --duration 3 --quick   # `make bench`
    python -m bench.serve_load --models resnet50 --device cuda --fp16 --layouts 1:0 1:12 4:0   # bench/gpu_check.sh

For each model (random weights: speed does not depend on them; the digits model keeps its 32x32 input):
  1. export it (and a second seed for a two-member ensemble) into a temporary BentoML store;
  2. ceiling, in this process, on the same graph and images: (a) ONNX Runtime alone at its best batch
     size, (b) decode + preprocess + ONNX Runtime, decoding in a thread per core, batches of 64;
  3. `bentoml serve` for each layout (worker processes : decoding processes per worker): the first
     requests after /readyz timed one by one (1, 3 and 17 images: three padded sizes on a GPU), then
     `/classify` (and `/ensemble`) under closed-loop load at each concurrency, then open-loop at half the
     best closed-loop rate; after each level, the real and the padded images the sessions ran (/metrics);
  4. the FastAPI + ONNX Runtime endpoint of `bench/fastapi_baseline.py` (one image a call, no batching, on
     the same device) and the LitServe endpoint of `bench/litserve_baseline.py` (its own batching) under
     the same closed-loop load.
Requests carry one image each: a real photo (`--images photos`: scikit-image's, resized to 500x375, JPEG
and PNG) or a small one (`--images small`: digits test PNGs, 32x32, where the request path around the
model is most of the cost). The load generator (`bench/loadgen.py`) runs in separate processes and reports
its own CPU time.
Writes bench/results/serve_load.{json,md} and serve_load_throughput.png / serve_load_latency.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen
from bench.common import cli, write_report

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "digits": {"arch": "resnet18", "resize_size": 32, "crop_size": 32, "classes": 10},
    "resnet50": {"arch": "resnet50", "resize_size": 256, "crop_size": 224, "classes": 1000},
    "efficientnet_v2_s": {"arch": "efficientnet_v2_s", "resize_size": 256, "crop_size": 224, "classes": 1000},
}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="service worker processes, one run each")
    p.add_argument("--layouts", nargs="+", help="W:P, a run each: W worker processes with P decoding processes "
                   "each (decoding.processes; 0: threads); replaces --workers")  # fmt: skip
    p.add_argument("--batch-sizes", default="auto", help="batching.sizes: auto, none, or sizes such as 1,8,64")
    p.add_argument("--conv-algo-search", default="EXHAUSTIVE", choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"])
    p.add_argument("--prefer-nhwc", action="store_true", help="cuda.prefer_nhwc in serving.yaml")
    p.add_argument("--cuda-graph", action="store_true", help="cuda.cuda_graph in serving.yaml")
    p.add_argument("--fp16", action="store_true", help="also the model-only ceiling of each model's fp16 graph")
    p.add_argument("--serve-fp16", action="store_true", help="serve the fp16 graphs (members too) instead of fp32")
    p.add_argument("--no-access-log", action="store_true", help="observability.access_log: false in serving.yaml")
    p.add_argument("--tracing", action="store_true", help="observability.tracing: true in serving.yaml")
    p.add_argument("--no-ensemble", action="store_true")
    p.add_argument("--no-fastapi", action="store_true")
    p.add_argument("--no-litserve", action="store_true")
    p.add_argument("--images", default="photos", choices=["photos", "jpeg", "small"],
                   help="500x375 photos as JPEG and PNG, the JPEGs alone, or 32x32 PNGs")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--preprocessing", default="auto", choices=["auto", "host", "gpu"],
                   help="serving.yaml preprocessing: where pixels are made (gpu: --device cuda)")  # fmt: skip
    p.add_argument("--max-latency-ms", type=int, default=60000, help="the shedding bound in serving.yaml")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--gpus", help="gpus in serving.yaml (all, or ids such as 0,1); a layout of 0 workers then "
                   "leaves workers out (one per GPU) and 0 decoding processes leaves decoding out (the cores "
                   "divided among the workers)")  # fmt: skip
    p.add_argument("--work", default="runs/serve_load", help="models, store and logs")
    p.add_argument("--out", default="bench/results/serve_load")
    p.add_argument("--quick", action="store_true", help="a short run for `make bench`")
    args = p.parse_args(argv)
    args.layouts = [tuple(int(n) for n in layout.split(":")) for layout in args.layouts or []] or [
        (w, 0) for w in args.workers
    ]
    args.fp16 = args.fp16 or args.serve_fp16
    return args


def layout_name(workers: int, processes: int) -> str:
    return f"w{workers}" + (f"p{processes}" if processes else "")


def serving_yaml(name: str, args: argparse.Namespace, workers: int, processes: int) -> str:
    """The serving.yaml of one run: `name` and a second seed, served alone and as a two-member ensemble."""
    suffix = "-fp16" if args.serve_fp16 else ""
    sizes = args.batch_sizes if args.batch_sizes in ("auto", "none") else f"[{args.batch_sizes}]"
    gpus = args.gpus if args.gpus in (None, "all") else [int(g) for g in args.gpus.split(",")]
    return (
        f"device: {args.device}\ndefault_model: {name}{suffix}\nmodels: [{name}{suffix}, {name}-b{suffix}]\n"
        + (f"gpus: {gpus}\n" if gpus else "")
        + (f"workers: {workers}\n" if workers or not args.gpus else "")
        + (f"decoding: {{processes: {processes}}}\n" if processes or not args.gpus else "")
        + f"ensembles:\n  pair: {{members: [{name}{suffix}, {name}-b{suffix}], voting: soft}}\n"
        f"batching: {{max_batch_size: {args.max_batch_size}, max_latency_ms: {args.max_latency_ms}, sizes: {sizes}}}\n"
        f"cuda: {{cudnn_conv_algo_search: {args.conv_algo_search}, prefer_nhwc: {str(args.prefer_nhwc).lower()}, "
        f"cuda_graph: {str(args.cuda_graph).lower()}}}\n"
        f"observability: {{access_log: {str(not args.no_access_log).lower()}, tracing: {str(args.tracing).lower()}}}\n"
        f"preprocessing: {args.preprocessing}\n"
    )


def photos() -> list[tuple[str, bytes]]:
    """Real photos at a typical upload size (500x375), each as JPEG (quality 90) and PNG."""
    from PIL import Image
    from skimage import data

    out = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((500, 375), Image.Resampling.BILINEAR)
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            buf = io.BytesIO()
            image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            out.append((f"{name}.{ext}", buf.getvalue()))
    return out


def small_images(work: Path) -> list[tuple[str, bytes]]:
    """Eight digits test images as the dataset stores them: 32x32 RGB PNG, a few hundred bytes each."""
    from training.digits import write_digits

    root = write_digits(work / "digits")
    paths = [sorted((root / "test" / str(d)).glob("*.png"))[0] for d in range(8)]
    return [(p.name, p.read_bytes()) for p in paths]


def prepare_models(names: list[str], work: Path, fp16: bool = False) -> dict[str, Path]:
    """Random-weight checkpoints -> ONNX graphs -> model store entries `<name>` and `<name>-b` (another seed);
    with fp16, also their float16 graphs `<name>-fp16` and `<name>-b-fp16`."""
    import torch

    from export.graph import export_onnx
    from export.store import store_model
    from training import checkpoint as ckpt
    from training.checkpoint import checkpoint_dict
    from training.config import load_config
    from training.models import build_model

    graphs = {}
    for name in names:
        spec = MODELS[name]
        for member, seed in ((name, 0), (f"{name}-b", 1)):
            onnx_path = work / f"{member}.onnx"
            marker = work / f"{member}.stored"
            if not marker.exists():
                torch.manual_seed(seed)
                config = load_config(None, {"model.arch": spec["arch"], "preprocess.crop_size": spec["crop_size"],
                                            "preprocess.resize_size": spec["resize_size"]})  # fmt: skip
                model, preprocess, _ = build_model(config["model"], spec["classes"], config["preprocess"])
                labels = [f"class{i}" for i in range(spec["classes"])]
                source = work / f"{member}.pt"
                ckpt.save(checkpoint_dict(model, None, labels, preprocess, config, {}), source)
                _, meta = export_onnx(ckpt.load(source), source, onnx_path)
                marker.write_text(store_model(onnx_path, member, meta))
                print(f"stored {marker.read_text()} ({spec['arch']}, {spec['crop_size']} px)", flush=True)
            graphs[member] = onnx_path
        for member in (name, f"{name}-b") if fp16 else ():
            half = work / f"{member}-fp16.onnx"
            marker = work / f"{member}-fp16.stored"
            if not marker.exists():
                source = work / f"{member}.pt"
                _, meta = export_onnx(ckpt.load(source), source, half, fp16=True)
                marker.write_text(store_model(half, f"{member}-fp16", meta))
            graphs[f"{member}-fp16"] = half
    return graphs


def model_only(graph, seconds: float) -> dict[int, float]:
    """images/s of `Graph.run` (the service's own call, I/O binding included) at each batch size."""
    crop = graph.meta["crop_size"]
    per_batch = {}
    for batch in (1, 8, 16, 32, 64):
        pixels = np.random.default_rng(0).integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
        graph.run(pixels)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            graph.run(pixels)
            n += batch
        per_batch[batch] = round(n / (time.perf_counter() - start), 1)
    return per_batch


def ceiling(path: Path, images: list[tuple[str, bytes]], device: str, seconds: float = 3.0) -> dict[str, Any]:
    """In-process images/s: (a) the model alone at its best batch size, (b) decode + preprocess + model."""
    from core import metadata
    from service.config import Limits
    from service.decode import decode
    from service.runtime import Graph

    graph = Graph(path, device)
    pre = metadata.preprocess_of(graph.meta)
    per_batch = model_only(graph, seconds)
    best = max(per_batch, key=per_batch.get)
    limits = Limits()
    raw = [data for _, data in images]
    with concurrent.futures.ThreadPoolExecutor(loadgen.cpu_count()) as pool:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            chunk = [raw[(n + i) % len(raw)] for i in range(64)]
            pixels = np.stack(list(pool.map(lambda d: decode(d, 0, limits, pre), chunk)))
            graph.run(pixels)
            n += 64
        full = n / (time.perf_counter() - start)
    return {"model_only_images_per_s": per_batch[best], "model_only_best_batch": best,
            "model_only_by_batch": per_batch, "decode_and_model_images_per_s": round(full, 1)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], log: Path, ready: str, wait: float = 240, cwd: Path = ROOT):
    """Start a server process group on a free port, in `cwd` (the tree it serves); yield its URL once `ready`
    answers 200."""
    import httpx

    port = _free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + wait
            while True:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{' '.join(cmd)} did not become ready; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready, timeout=2).status_code == 200:
                        break
                time.sleep(0.5)
            yield url, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            # what outlives the server in its group (LitServe's inference worker ignores SIGTERM and kept a
            # core busy after its server had exited) would load the next target's measurement
            deadline = time.time() + 5
            with contextlib.suppress(ProcessLookupError):
                while time.time() < deadline:
                    os.killpg(proc.pid, 0)
                    time.sleep(0.2)
                os.killpg(proc.pid, signal.SIGKILL)


def process_tree(proc: subprocess.Popen) -> list:
    """The server process and all its workers, as psutil processes (empty once it has exited)."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(processes: list) -> int:
    """Resident memory of psutil processes together (one that has exited counts 0)."""
    import psutil

    total = 0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def server_cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU seconds used so far by a server and all its worker processes."""
    import psutil

    total = 0.0
    for p in process_tree(proc):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


SERVE = [str(Path(sys.executable).parent / "bentoml"), "serve", "service.service:Classifier",
         "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip


def store_env(work_arg: str) -> tuple[Path, dict[str, str]]:
    """The benchmarks' work folder and the environment whose BentoML store lives in it (this process too)."""
    work = (ROOT / work_arg).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(BENTOML_HOME=str(work / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    return work, dict(os.environ)


def batch_counters(url: str) -> dict[str, float]:
    """Totals over every model and worker of the service's batch histograms: session calls, the real
    images they ran, and the images they ran with padding."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals = {}
    for key, metric in (("calls", "inference_batch_images_count"), ("real", "inference_batch_images_sum"),
                        ("run", "inference_batch_run_images_sum")):  # fmt: skip
        totals[key] = sum(float(v) for v in re.findall(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.M))
    return totals


def first_requests(url: str, images: list[tuple[str, bytes]], model: str) -> dict[str, float]:
    """Milliseconds of the first requests after /readyz, one at a time, with 1, 3 and 17 images: on a GPU
    three batch sizes that no request has used yet, each of which must already have been warmed."""
    import httpx

    out = {}
    jpegs = [img for img in images if img[0].endswith(".jpg")] or images
    with httpx.Client(timeout=120) as client:
        for n in (1, 3, 17):
            files = [("images", jpegs[i % len(jpegs)]) for i in range(n)]
            start = time.perf_counter()
            response = client.post(f"{url}/classify", files=files, data={"model": model})
            out[f"{n}_images_ms"] = round(1000 * (time.perf_counter() - start), 1)
            if response.status_code != 200:
                out[f"{n}_images_status"] = response.status_code
    return out


def load_levels(url: str, proc, requests: list[loadgen.Request], args, label: str) -> list[dict[str, Any]]:
    rows = []
    for c in args.concurrency:
        cpu0 = server_cpu_seconds(proc)
        service = label.startswith("service")
        batches0 = batch_counters(url) if service else {}
        row = loadgen.run(url, requests, concurrency=c, duration=args.duration, warmup=args.warmup,
                          processes=args.client_processes)  # fmt: skip
        row["server_cpu_share"] = round((server_cpu_seconds(proc) - cpu0) / (args.duration + args.warmup), 2)
        if service:
            batches = {k: v - batches0[k] for k, v in batch_counters(url).items()}
            calls = max(batches["calls"], 1)
            row["mean_batch_real"] = round(batches["real"] / calls, 1)
            row["mean_batch_run"] = round(batches["run"] / calls, 1)
        row["target"] = label
        rows.append(row)
        print(f"{label:>28} c={c:<3} {row['images_per_s']:8.1f} img/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
              f"  errors {row['errors']} {row['statuses']}  client cpu {row['client_cpu_share']:.2f}"
              f"  server cpu {row['server_cpu_share']:.2f}  batch real/run {row.get('mean_batch_real', '-')}"
              f"/{row.get('mean_batch_run', '-')}", flush=True)  # fmt: skip
    return rows


def bench_model(name: str, graphs: dict[str, Path], images, args, env: dict[str, str], work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"model": name, **MODELS[name]}
    result["ceiling"] = ceiling(graphs[name], images, args.device, seconds=1.5 if args.quick else 4.0)
    if args.fp16:
        from service.runtime import Graph

        half = Graph(graphs[f"{name}-fp16"], args.device)
        result["ceiling"]["model_only_fp16_by_batch"] = model_only(half, seconds=1.5 if args.quick else 4.0)
    print(f"{name}: ceiling {json.dumps(result['ceiling'])}", flush=True)
    served = f"{name}-fp16" if args.serve_fp16 else name
    single = [loadgen.Request("/classify", *loadgen.multipart([img], {"model": served})) for img in images]
    pair = [loadgen.Request("/ensemble", *loadgen.multipart([img], {"ensemble": "pair"})) for img in images]
    result["service"], result["ensemble"], result["open_loop"], result["first_requests"] = [], [], {}, {}
    for workers, processes in args.layouts:
        layout = layout_name(workers, processes)
        serving = work / f"serving-{name}-{layout}.yaml"
        serving.write_text(serving_yaml(name, args, workers, processes))
        serve_env = {**env, "SERVING_CONFIG": str(serving)}
        started = time.perf_counter()
        with server(SERVE, serve_env, work / f"serve-{name}-{layout}.log", "/readyz") as (url, proc):
            first = {"ready_s": round(time.perf_counter() - started, 1), **first_requests(url, images, served)}
            result["first_requests"][layout] = first
            print(f"{layout}: ready after {first.pop('ready_s')} s; first requests {first}", flush=True)
            rows = load_levels(url, proc, single, args, f"service /classify {layout} {name}")
            result["service"] += rows
            best = max(r["requests_per_s"] for r in rows)
            open_row = loadgen.run(url, single, rate=max(1.0, best / 2), duration=args.duration, warmup=args.warmup,
                                   processes=args.client_processes)  # fmt: skip
            result["open_loop"][layout] = open_row
            print(f"{'open loop at half max':>28} {open_row['rate']:.1f}/s  p50 {open_row['p50_ms']} ms  "
                  f"p99 {open_row['p99_ms']} ms  max {open_row['max_ms']} ms  errors {open_row['errors']}",
                  flush=True)  # fmt: skip
            if not args.no_ensemble:
                result["ensemble"] += load_levels(url, proc, pair, args, f"service /ensemble x2 {layout} {name}")
    if not args.no_fastapi:
        fastapi_cmd = [sys.executable, "-m", "uvicorn", "bench.fastapi_baseline:app", "--host", "127.0.0.1",
                       "--port", "{port}", "--log-level", "warning"]  # fmt: skip
        from service.runtime import uses_gpu

        fa_env = {**env, "MODEL_PATH": str(graphs[served]), "DEVICE": "cuda" if uses_gpu(args.device) else "cpu"}
        with server(fastapi_cmd, fa_env, work / f"fastapi-{name}.log", "/docs") as (url, proc):
            plain = [loadgen.Request("/classify", *loadgen.multipart([img])) for img in images]
            result["fastapi"] = load_levels(url, proc, plain, args, f"fastapi /classify {name}")
    if not args.no_litserve:
        from service.runtime import uses_gpu

        device = "cuda" if uses_gpu(args.device) else "cpu"
        litserve_cmd = [sys.executable, "-m", "bench.litserve_baseline", "--port", "{port}", "--device", device,
                        "--max-batch-size", str(args.max_batch_size)]  # fmt: skip
        ls_env = {**env, "MODEL_PATH": str(graphs[served])}
        with server(litserve_cmd, ls_env, work / f"litserve-{name}.log", "/health") as (url, proc):
            plain = [loadgen.Request("/classify", *loadgen.multipart([img])) for img in images]
            result["litserve"] = load_levels(url, proc, plain, args, f"litserve /classify {name}")
    return result


def _best(rows: list[dict[str, Any]]) -> float:
    return max(r["images_per_s"] for r in rows) if rows else 0.0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Serving load", "",
        f"Machine: {report['machine']}. {report['settings']}", "",
        "| model | target | clients | img/s | p50 ms | p90 ms | p99 ms | max ms | errors | client CPU | server CPU "
        "| batch real / run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for m in report["models"]:
        for key in ("service", "ensemble", "fastapi", "litserve"):
            for r in m.get(key, []):
                batch = f"{r['mean_batch_real']} / {r['mean_batch_run']}" if "mean_batch_run" in r else "-"
                lines.append(
                    f"| {m['model']} | {r['target'].split(' ' + m['model'])[0]} | {r['concurrency']} | "
                    f"{r['images_per_s']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                    f"{r['errors']} | {r['client_cpu_share']} | {r['server_cpu_share']} | {batch} |"
                )
    lines += ["", "First requests after /readyz, one at a time (ms):", "",
              "| model | layout | 1 image | 3 images | 17 images |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for m in report["models"]:
        for layout, f in m.get("first_requests", {}).items():
            lines.append(f"| {m['model']} | {layout} | {f['1_images_ms']} | {f['3_images_ms']} | {f['17_images_ms']} |")
    lines += ["", "| model | ceiling (a) model only | ceiling (b) decode + model | service best | "
              "service / (b) | FastAPI best | service / FastAPI | LitServe best | service / LitServe | "
              "open loop p50 / p99 ms at half max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for m in report["models"]:
        c, f, lit = m["ceiling"], _best(m.get("fastapi", [])), _best(m.get("litserve", []))
        for layout, o in m["open_loop"].items():
            s = _best([r for r in m["service"] if f" {layout} " in r["target"]])
            lines.append(
                f"| {m['model']} ({layout}) | {c['model_only_images_per_s']} (batch {c['model_only_best_batch']}) | "
                f"{c['decode_and_model_images_per_s']} | {s} | {s / c['decode_and_model_images_per_s']:.2f} | "
                f"{f or '-'} | {f'{s / f:.2f}' if f else '-'} | {lit or '-'} | {f'{s / lit:.2f}' if lit else '-'} | "
                f"{o['p50_ms']} / {o['p99_ms']} at {o['rate']:.0f}/s |"
            )
    batches = sorted({int(b) for m in report["models"] for b in m["ceiling"]["model_only_by_batch"]})
    lines += ["", "Model only (`Graph.run`, I/O binding), images/s by batch size:", "",
              "| model | precision | " + " | ".join(f"batch {b}" for b in batches) + " |",
              "|---|---|" + "---:|" * len(batches)]  # fmt: skip
    for m in report["models"]:
        for precision, key in (("fp32", "model_only_by_batch"), ("fp16", "model_only_fp16_by_batch")):
            if key in m["ceiling"]:
                row = {int(b): v for b, v in m["ceiling"][key].items()}
                cells = " | ".join(str(row.get(b, "-")) for b in batches)
                lines.append(f"| {m['model']} | {precision} | {cells} |")
    return "\n".join(lines) + "\n"


def _by_target(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by what was loaded ("service /classify w2 digits" -> "service /classify w2")."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["target"].rsplit(" ", 1)[0], []).append(r)
    return groups


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for key, style in (("service", "o-"), ("ensemble", "s--"), ("fastapi", "^-"), ("litserve", "v-")):
            for target, rows in _by_target(m.get(key, [])).items():
                ax.plot([r["concurrency"] for r in rows], [r["images_per_s"] for r in rows], style, label=target)
        ax.axhline(m["ceiling"]["decode_and_model_images_per_s"], color="grey", ls=":", label="ceiling (b)")
        ax.axhline(m["ceiling"]["model_only_images_per_s"], color="black", ls=":", label="ceiling (a)")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="images/s", title=m["model"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}_throughput.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        targets = {**_by_target(m.get("service", [])), **_by_target(m.get("fastapi", [])),
                   **_by_target(m.get("litserve", []))}  # fmt: skip
        colors = ("tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:red", "tab:brown")
        for (target, rows), color in zip(targets.items(), colors):
            c = [r["concurrency"] for r in rows]
            ax.plot(c, [r["p50_ms"] for r in rows], "o-", color=color, label=f"{target} p50")
            ax.plot(c, [r["p99_ms"] for r in rows], "o--", color=color, label=f"{target} p99")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title=m["model"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}_latency.png", dpi=100)
    plt.close(fig)


def gpu_name() -> str:
    """The GPU's name after a comma, when nvidia-smi names one; else nothing."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip()  # fmt: skip
        if out:
            return ", " + out.splitlines()[0]
    return ""


def run(args: argparse.Namespace) -> None:
    import platform

    work, env = store_env(args.work)
    graphs = prepare_models(args.models, work, fp16=args.fp16)
    images = {"photos": photos, "jpeg": lambda: photos()[::2], "small": lambda: small_images(work)}[args.images]()
    kind = {"photos": "photos, 500x375 JPEG/PNG", "jpeg": "photos, 500x375 JPEG", "small": "digits PNGs, 32x32"}[
        args.images
    ]
    settings = (f"{args.duration:g} s per level after {args.warmup:g} s warm-up; {args.client_processes} client "
                f"processes; one image per request ({len(images)} {kind}); device {args.device}; "
                f"max_batch_size {args.max_batch_size}, max_latency_ms {args.max_latency_ms}, batching.sizes "
                f"{args.batch_sizes}; cuda: {args.conv_algo_search}, prefer_nhwc {args.prefer_nhwc}, cuda_graph "
                f"{args.cuda_graph}; access log {not args.no_access_log}, tracing {args.tracing}; "
                f"{'fp16' if args.serve_fp16 else 'fp32'} graphs served; layouts "
                f"{[layout_name(*lay) for lay in args.layouts]} (wN: N worker processes, pM: M decoding processes "
                f"each).")  # fmt: skip
    machine = f"{platform.machine()} Linux, {loadgen.cpu_count()} cores{gpu_name()}"
    report = {"machine": machine, "settings": settings, "models": []}
    for name in args.models:
        report["models"].append(bench_model(name, graphs, images, args, env, work))
    out = ROOT / args.out
    text = markdown(report)
    write_report(out, report, text)
    plots(report, out)
    print(text)


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    sys.exit(main())
