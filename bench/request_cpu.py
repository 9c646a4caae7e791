"""Host CPU milliseconds per request: the service against the endpoints a user would pick instead, under wrk.

    python -m bench.request_cpu                                   # every target, both images, 16 and 64 connections
    python -m bench.request_cpu --targets service fastapi --images small --duration 5
    python -m bench.request_cpu --targets service --forms multipart raw   # the raw body (image bytes as the body)
    python -m bench.request_cpu --quick                           # a short run that checks the pipeline
    git worktree add --detach /tmp/before OLD_COMMIT              # before / after, alternated:
    python -m bench.request_cpu --targets service --label before --tree /tmp/before
    python -m bench.request_cpu --targets service --label after

Throughput depends on the cores a machine has; CPU time per request does not much, so the figure compares across
machines (a GPU machine too: there the host CPU is what the request path costs). For each target:
  - `service`: `bentoml serve` of the project's service (`--tree`'s checkout, `--workers` workers) with
    bench/serve_load.py's temporary store and serving.yaml for `--model` (digits by default: ResNet-18 at 32 px,
    random weights);
  - `fastapi`: bench/fastapi_baseline.py under uvicorn (one image a call, no batching; `--fastapi-workers`
    processes, one by default);
  - `litserve`: bench/litserve_baseline.py (its own batching; skipped with a note when litserve is missing:
    `pip install -e '.[bench]'`);
  - `bentoml-api`: bench/bentoml_baseline.py, the plain batchable BentoML API from BentoML's docs;
each started on a free 127.0.0.1 port, waited for, then loaded by wrk (C, so the client takes little of the
CPU) with a Lua script that sends one pre-built body again and again and counts every answer's status. A
request carries one image: `small` (a 32x32 digits test PNG) or `photo` (a 500x375 JPEG). Body forms:
`multipart` (field `images`, and `model` for the service) and `raw` (the image bytes as the whole body with its
image content type, `?model=digits`); only the service is sent `raw`. After a warm-up run, the measured run;
right before and after it the user + system CPU time of the server's whole process tree (arbiter, workers,
decoding processes) is read with psutil. CPU ms per request = that CPU / the 2xx answers; every other
answer and every socket error is an error. wrk's own CPU time is reported beside it, so a reader can see the
client left the server its cores. Requests/s and CPU ms are also given as ratios to fastapi's for the same
image and connections, measured in the same run. Writes bench/results/request_cpu[-LABEL].{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cli, write_report

TARGETS = ("service", "fastapi", "litserve", "bentoml-api")
IMAGES = ("small", "photo")
FORMS = ("multipart", "raw")
# digits: the ResNet-18 of the bundled digits (32x32 input: decoding and the request path are most of the work);
# photo-224: a graph at 224 px (resize 256) whose network is a mean colour and a matrix product (tests/tiny_onnx.py),
# so a request costs its decoding, resize and crop to 224, and the request path, and almost nothing else;
# resnet50: bench/serve_load.py's ResNet-50 at 224 (random weights), the GPU's headline model
DESCRIBED = {"digits": "digits ResNet-18 (random weights)", "photo-224": "a 224-px graph of almost no compute",
             "resnet50": "ResNet-50 at 224 px (random weights)"}  # fmt: skip
MODELS = tuple(DESCRIBED)
BATCHES = (1, 4, 16, 64)  # batch sizes the in-process floor times the model at

# The Lua script wrk runs in each of its threads: the request is built once from wrk.method / headers / body;
# `response` counts statuses in the thread's own state and `done` prints the totals of every thread.
LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
local f = assert(io.open("%(body_path)s", "rb"))
wrk.body = f:read("*a")
f:close()

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %%d %%d\\n", status, n))
  end
  io.write(string.format("latency_us p50 %%d p99 %%d\\n", latency:percentile(50), latency:percentile(99)))
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    """A wrk duration ("812.00us", "4.31ms", "1.02s", "1.00m") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """What a wrk run printed (with --latency and this module's Lua script) -> requests, seconds, requests/s,
    p50/p99 ms, statuses, socket errors; `ok` counts 2xx answers and `errors` everything else."""
    out: dict[str, Any] = {"socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}, "statuses": {}}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T' line in wrk's output")
    out["requests"] = int(m.group(1))
    out["seconds"] = _ms(m.group(2)) / 1000
    out["requests_per_s"] = float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx_3xx"] = int(m.group(1)) if m else 0
    for status, n in re.findall(r"^status (\d+) (\d+)$", text, re.M):
        out["statuses"][int(status)] = int(n)
    m = re.search(r"^latency_us p50 (\d+) p99 (\d+)$", text, re.M)
    if m:  # the Lua script's exact percentiles
        out["p50_ms"], out["p99_ms"] = int(m.group(1)) / 1000, int(m.group(2)) / 1000
    else:  # wrk's --latency table, rounded to its units
        out["p50_ms"] = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
        out["p99_ms"] = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    if not out["statuses"]:  # without the script's counts: wrk's own (it counts status > 399 only)
        out["statuses"] = {0: out["requests"] - out["non_2xx_3xx"]} if out["requests"] else {}
        out["ok"] = out["requests"] - out["non_2xx_3xx"]
    else:
        out["ok"] = sum(n for s, n in out["statuses"].items() if 200 <= s < 300)
    out["errors"] = out["requests"] - out["ok"] + sum(out["socket_errors"].values())
    return out


def cpu_snapshot(processes: list) -> dict[tuple[int, float], float]:
    """CPU seconds (user + system, and those of reaped children) of each psutil process, keyed by (pid, start
    time) so that a reused pid is another process; one that has exited is left out."""
    import psutil

    out = {}
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            out[(p.pid, p.create_time())] = t.user + t.system + t.children_user + t.children_system
    return out


def cpu_delta(before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]) -> dict[str, Any]:
    """CPU seconds a process tree spent between two snapshots: each process in `after` less its own figure in
    `before` (0 for one started between them). A process gone by `after` adds nothing: what it spent reaches
    its parent's children time once reaped, else it is lost; `vanished` counts them."""
    seconds = sum(cpu - before.get(key, 0.0) for key, cpu in after.items())
    return {"cpu_s": seconds, "vanished": len(before.keys() - after.keys()), "new": len(after.keys() - before.keys())}


def busy_seconds() -> float:
    """CPU seconds every core of the machine has spent on anything but idling, since boot."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wrk_threads(connections: int) -> int:
    """One wrk thread per ~32 connections, at most 2 (never more threads than connections)."""
    return max(1, min(2, round(connections / 32), connections))


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[str, float]:
    """wrk's output (also written beside the script, .txt) and its own CPU seconds (user + system, from wait4)."""
    cmd = [WRK, "-t", str(wrk_threads(connections)), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout",
           "30s", "--latency", "-s", str(script), url]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        text = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{text}")
    script.with_name(f"{script.stem}-c{connections}.txt").write_text(text)
    return text, usage.ru_utime + usage.ru_stime


WRK = shutil.which("wrk") or "/usr/bin/wrk"


def start_profile(tree: list, seconds: float, path: Path) -> subprocess.Popen | None:
    """py-spy recording the busiest process of the server's tree (the worker that has spent the most CPU) for
    `seconds`, every thread, as collapsed stacks in `path`; None (and a line saying why) without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("no py-spy here (pip install -e '.[bench]'): no profile", flush=True)
        return None
    busiest = max(tree, key=lambda p: sum(p.cpu_times()[:2]))
    record = [spy, "record", "--pid", str(busiest.pid), "--duration", str(int(seconds)), "--format", "raw",
              "--output", str(path), "--nonblocking", "--threads"]  # fmt: skip
    return subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path: Path, top: int = 12) -> str:
    """One note: each thread's share of the samples and the `top` frames (inclusive) of a py-spy profile."""
    from bench.profile_service import top_functions

    if not path.exists():
        return f"profile {path.name}: py-spy wrote nothing"
    total, frames = top_functions(path.read_text(), 4 * top)
    threads = [(f.split(": ")[-1], n) for f, n in frames if f.startswith("thread (")]
    # the frames every thread or the event loop passes through say nothing of where the time goes
    plumbing = ("threading.py", "concurrent/futures", "asyncio/", "runpy", "click/", "uvicorn/server.py",
                "uvicorn/_compat.py", "_bentoml_impl/worker/service.py")  # fmt: skip
    named = [(f, n) for f, n in frames if not f.startswith("thread (") and not any(p in f for p in plumbing)]
    shares = ", ".join(f"{frame} {100 * n / max(total, 1):.0f}%" for frame, n in threads + named[:top])
    return f"profile of the busiest worker ({path.name}, {total} samples): {shares}"


def measure(
    url: str, proc, script: Path, connections: int, args: argparse.Namespace, profile_to: Path | None = None
) -> dict[str, Any]:
    """A warm-up run, then the measured one with the server tree's CPU read right before and after it, and
    py-spy on its busiest worker meanwhile where `profile_to` is given."""
    from bench import serve_load as sl

    run_wrk(url, script, connections, args.warmup)
    tree = sl.process_tree(proc)
    before, busy = cpu_snapshot(tree), busy_seconds()
    spy = start_profile(tree, args.duration, profile_to) if profile_to else None
    start = time.perf_counter()
    text, client_cpu = run_wrk(url, script, connections, args.duration)
    wall = time.perf_counter() - start
    after, busy = cpu_snapshot(sl.process_tree(proc)), busy_seconds() - busy
    if spy is not None:
        spy.wait()
    row = parse_wrk(text)
    cpu = cpu_delta(before, after)
    row.update(
        connections=connections,
        wrk_threads=wrk_threads(connections),
        server_cpu_s=round(cpu["cpu_s"], 3),
        server_processes=len(after),
        vanished=cpu["vanished"],
        cpu_ms_per_request=round(1000 * cpu["cpu_s"] / row["ok"], 3) if row["ok"] else None,
        # every answer, refusals too: what a 4xx costs where nothing succeeded
        cpu_ms_per_answer=round(1000 * cpu["cpu_s"] / row["requests"], 3) if row["requests"] else None,
        server_cores=round(cpu["cpu_s"] / wall, 2),
        client_cpu_s=round(client_cpu, 3),
        client_cores=round(client_cpu / wall, 2),
        # the rest of the machine's busy time: other work on a shared machine, competing for the cores
        other_cores=round(max(0.0, busy - cpu["cpu_s"] - client_cpu) / wall, 2),
        wall_s=round(wall, 2),
    )
    return row


def bodies(work: Path) -> dict[str, tuple[str, bytes, str]]:
    """Each image kind -> (file name, bytes, content type)."""
    from bench import serve_load as sl

    name, data = sl.small_images(work)[0]
    photo = next((n, d) for n, d in sl.photos() if n.endswith(".jpg"))
    return {"small": (name, data, "image/png"), "photo": (*photo, "image/jpeg")}


def tiny_models(name: str, work: Path) -> dict[str, Path]:
    """Two tiny graphs at 224 px (tests/tiny_onnx.py, seeds 0 and 1) in the model store as `name`, `name`-b."""
    import onnxruntime as ort

    from core import metadata
    from export.store import store_model
    from tests.tiny_onnx import tiny_graph

    graphs = {}
    for member, seed in ((name, 0), (f"{name}-b", 1)):
        path, marker = work / f"{member}.onnx", work / f"{member}.stored"
        if not marker.exists():
            tiny_graph(path, seed, crop_size=224, resize_size=256)
            meta = metadata.decode(ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map)
            marker.write_text(store_model(path, member, meta))
        graphs[member] = path
    return graphs


def floor(graph_path: Path, data: bytes, device: str = "cpu", repeats: int = 40) -> dict[str, Any]:
    """What a request cannot cost less than, in this process with the service's own code (CPU time, all threads):
    decoding and resizing the image, and the model per image at each of BATCHES on `device` (on a GPU, the host's
    part of a session call)."""
    import numpy as np

    from core import metadata
    from service.config import Limits
    from service.decode import decode
    from service.runtime import Graph

    graph = Graph(graph_path, device)
    preprocess, limits = metadata.preprocess_of(graph.meta), Limits()
    pixels = decode(data, 0, limits, preprocess)
    start = time.process_time()
    for _ in range(repeats):
        decode(data, 0, limits, preprocess)
    decode_ms = 1000 * (time.process_time() - start) / repeats
    model_ms = {}
    for batch in BATCHES:
        batched = np.repeat(pixels[None], batch, axis=0)
        graph.run(batched)
        calls = max(2, repeats // batch)
        start = time.process_time()
        for _ in range(calls):
            graph.run(batched)
        model_ms[batch] = round(1000 * (time.process_time() - start) / (calls * batch), 3)
    return {"decode_ms": round(decode_ms, 3), "model_ms": model_ms}


def over_floor(row: dict[str, Any], before: dict[str, float], after: dict[str, float], floor: dict) -> dict:
    """The images a session call ran on average during the run, and the CPU a request cost beyond its floor:
    decoding plus the model at the batch size nearest that average."""
    calls, images = after["calls"] - before["calls"], after["real"] - before["real"]
    if not calls or row["cpu_ms_per_request"] is None:
        return {}
    batch = images / calls
    nearest = min(floor["model_ms"], key=lambda b: abs(b - batch))
    beyond = row["cpu_ms_per_request"] - floor["decode_ms"] - floor["model_ms"][nearest]
    return {"mean_batch": round(batch, 1), "floor_ms": round(row["cpu_ms_per_request"] - beyond, 3),
            "beyond_floor_ms": round(beyond, 3)}  # fmt: skip


def request_script(
    work: Path, target: str, image: str, form: str, picture: tuple[str, bytes, str], model: str
) -> tuple[Path, str]:
    """The Lua script for one target, image and form, and the path its URL takes."""
    from bench import loadgen

    name, data, content_type = picture
    if form == "multipart":
        fields = {"model": model} if target == "service" else {}
        body, content_type = loadgen.multipart([(name, data)], fields)
        path = "/classify"
    else:
        body, path = data, f"/classify?model={model}"
    folder = work / "request_cpu"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{target}-{image}-{form}"
    (folder / f"{stem}.body").write_bytes(body)
    script = folder / f"{stem}.lua"
    script.write_text(LUA % {"content_type": content_type, "body_path": folder / f"{stem}.body"})
    return script, path


def server_command(target: str, args: argparse.Namespace, graphs: dict[str, Path], env: dict[str, str], work: Path):
    """(command, environment, ready route, working folder) that start `target` on port {port}."""
    from bench import serve_load as sl
    from service.runtime import uses_gpu

    device = "cuda" if uses_gpu(args.device) else "cpu"
    plain = {**env, "MODEL_PATH": str(graphs[args.model]), "DEVICE": device}
    if target == "service":
        serving = work / f"serving-request-cpu-{args.model}-w{args.workers}.yaml"
        options = sl._parse(["--device", args.device, "--preprocessing", args.preprocessing])
        serving.write_text(sl.serving_yaml(args.model, options, args.workers, args.decoding_processes))
        tree = args.tree.resolve()
        return sl.SERVE, {**env, "SERVING_CONFIG": str(serving), "PYTHONPATH": str(tree)}, "/readyz", tree
    if target == "fastapi":
        cmd = [sys.executable, "-m", "uvicorn", "bench.fastapi_baseline:app", "--host", "127.0.0.1", "--port",
               "{port}", "--log-level", "warning", "--workers", str(args.fastapi_workers)]  # fmt: skip
        return cmd, plain, "/docs", sl.ROOT
    if target == "litserve":
        cmd = [sys.executable, "-m", "bench.litserve_baseline", "--port", "{port}", "--device", device]
        return cmd, plain, "/health", sl.ROOT
    cmd = [sl.SERVE[0], "serve", "bench.bentoml_baseline:Baseline", "--host", "127.0.0.1", "--port", "{port}"]
    return cmd, plain, "/readyz", sl.ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench import serve_load as sl

    p = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--images", nargs="+", default=list(IMAGES), choices=IMAGES,
                   help="small: a 32x32 digits PNG; photo: a 500x375 JPEG")  # fmt: skip
    p.add_argument("--forms", nargs="+", default=["multipart"], choices=FORMS,
                   help="raw: the image as the whole body (the service only)")  # fmt: skip
    p.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of the wrk run before each measured one")
    p.add_argument("--workers", type=int, default=1, help="the service's worker processes")
    p.add_argument("--fastapi-workers", type=int, default=1, help="the FastAPI endpoint's processes (uvicorn)")
    p.add_argument("--decoding-processes", type=int, default=0, help="decoding.processes of each worker (0: threads)")
    p.add_argument(
        "--model",
        default="digits",
        choices=MODELS,
        help="digits: ResNet-18 at 32 px; photo-224: a graph at 224 px whose network costs nearly nothing (the request "
        "is its decoding and path); resnet50: ResNet-50 at 224 px (random weights; torch to export it)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--preprocessing", default="auto", choices=["auto", "host", "gpu"],
                   help="the service's serving.yaml preprocessing (gpu: JPEGs made on the GPU)")  # fmt: skip
    p.add_argument("--tree", type=Path, default=sl.ROOT, help="the checkout whose service is served")
    p.add_argument("--label", default="", help="names this run's figures and report (before, after)")
    p.add_argument("--work", default="runs/serve_load", help="serve_load's work folder: models, store, logs")
    p.add_argument("--out", default="bench/results/request_cpu")
    p.add_argument("--profile", action="store_true", help="py-spy on the service's busiest worker during its run at "
                   "the most connections: collapsed stacks beside the report, the top frames in its notes")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="1 s warm-up, 2 s runs, 16 connections: checks the pipeline")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.connections = 2.0, 1.0, [16]
    if not (args.duration.is_integer() and args.warmup.is_integer()):
        p.error("--duration and --warmup are whole seconds (wrk's -d takes no fractions)")
    return args


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Host CPU per request", "",
        f"Machine: {report['machine']}. {report['settings']}", "",
        "| target | image | form | connections | requests/s | x fastapi | CPU ms/request | x fastapi | beyond floor ms "
        "| images a call | server cores | p50 ms | p99 ms | errors | client cores | other cores |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]  # fmt: skip
    for r in report["rows"]:
        errors = str(r["errors"])
        if r["errors"]:
            detail = [f"{s}: {n}" for s, n in sorted(r["statuses"].items()) if not 200 <= s < 300]
            detail += [f"{k} {n}" for k, n in r["socket_errors"].items() if n]
            errors += f" ({', '.join(detail)})"
        lines.append(
            f"| {r['target']} | {r['image']} | {r['form']} | {r['connections']} | {r['requests_per_s']} | "
            f"{_cell(r.get('rps_vs_fastapi'))} | {_cell(r['cpu_ms_per_request'])} | {_cell(r.get('cpu_vs_fastapi'))} | "
            f"{_cell(r.get('beyond_floor_ms'))} | {_cell(r.get('mean_batch'))} | {r['server_cores']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {errors} | {r['client_cores']} | {r['other_cores']} |"
        )
    lines += [
        "",
        "server cores, client cores (wrk), other cores (the rest of the machine's busy time): CPU seconds "
        "over the measured run's wall time. beyond floor: CPU ms/request less decoding and the model at the "
        "batch size nearest the run's mean (images a call), both timed in the benchmark's own process.",
    ] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's requests/s and CPU ms/request over fastapi's for the same image and connections."""
    fastapi = {(r["image"], r["connections"]): r for r in rows if r["target"] == "fastapi"}
    for r in rows:
        base = fastapi.get((r["image"], r["connections"]))
        if base is None or r["target"] == "fastapi":
            continue
        if base["requests_per_s"] and r["ok"]:
            r["rps_vs_fastapi"] = round(r["requests_per_s"] / base["requests_per_s"], 2)
        if base["cpu_ms_per_request"] and r["cpu_ms_per_request"]:
            r["cpu_vs_fastapi"] = round(r["cpu_ms_per_request"] / base["cpu_ms_per_request"], 2)


def run(args: argparse.Namespace) -> None:
    import platform

    from bench import loadgen
    from bench import serve_load as sl
    from core.devices import uses_gpu

    work, env = sl.store_env(args.work)
    graphs = tiny_models(args.model, work) if args.model == "photo-224" else sl.prepare_models([args.model], work)
    pictures = bodies(work)
    device = "cuda" if uses_gpu(args.device) else "cpu"
    floors = {image: floor(graphs[args.model], pictures[image][1], device) for image in args.images}
    for image, f in floors.items():
        print(
            f"floor, in this process: decode + resize {f['decode_ms']} ms an image ({image}); the model "
            f"{f['model_ms']} ms an image at batch {list(f['model_ms'])}",
            flush=True,
        )
    rows: list[dict[str, Any]] = []
    notes = []
    for target in args.targets:
        if target == "litserve" and importlib.util.find_spec("litserve") is None:
            notes.append("litserve skipped: not importable (pip install -e '.[bench]')")
            print(notes[-1], flush=True)
            continue
        forms = args.forms if target == "service" else [f for f in args.forms if f == "multipart"]
        if not forms:
            continue
        name = f"{target} ({args.label})" if args.label and target == "service" else target
        cmd, server_env, ready, cwd = server_command(target, args, graphs, env, work)
        log = work / f"request-cpu-{target}{'-' + args.label if args.label else ''}.log"
        with sl.server(cmd, server_env, log, ready, cwd=cwd) as (url, proc):
            for image in args.images:
                for form in forms:
                    script, path = request_script(work, target, image, form, pictures[image], args.model)
                    for connections in args.connections:
                        row = {"target": name, "image": image, "form": form}
                        counted = sl.batch_counters(url) if target == "service" else None
                        profile = None
                        if args.profile and target == "service" and connections == max(args.connections):
                            profile = Path(f"{args.out}-profile{'-' + args.label if args.label else ''}-{image}-"
                                           f"{form}-c{connections}.txt")  # fmt: skip
                            profile.parent.mkdir(parents=True, exist_ok=True)
                        row.update(measure(url + path, proc, script, connections, args, profile))
                        if profile is not None:
                            notes.append(profile_summary(profile))
                        if counted is not None:
                            row.update(over_floor(row, counted, sl.batch_counters(url), floors[image]))
                        rows.append(row)
                        print(f"{name:>16} {image:>5} {form:>9} c={connections:<3} {row['requests_per_s']:8.1f} req/s"
                              f"  cpu {_cell(row['cpu_ms_per_request'])} ms/req  server cores {row['server_cores']}"
                              f"  p50 {row['p50_ms']} p99 {row['p99_ms']} ms  errors {row['errors']} "
                              f"{row['statuses']}  client cores {row['client_cores']}  other {row['other_cores']}",
                              flush=True)  # fmt: skip
    add_ratios(rows)
    if any(r["form"] == "raw" and r["errors"] for r in rows):
        notes.append("raw: errors are the service's answers to a body that is the image itself")
    settings = (f"wrk, {args.duration:g} s measured after {args.warmup:g} s warm-up, one image a request (small: "
                f"a 32x32 digits PNG, {len(pictures['small'][1])} bytes; photo: a 500x375 JPEG, "
                f"{len(pictures['photo'][1])} bytes); {DESCRIBED[args.model]}; service workers "
                f"{args.workers} (decoding processes {args.decoding_processes}), FastAPI's {args.fastapi_workers}; "
                f"tree {args.tree.resolve()}; device {args.device}, preprocessing {args.preprocessing}.")  # fmt: skip
    notes.append("floor (in this process, the service's own code, CPU time): " + "; ".join(
        f"{image}: decode + resize {f['decode_ms']} ms, the model {f['model_ms']} ms an image at batch "
        f"{', '.join(map(str, f['model_ms']))}" for image, f in floors.items()))  # fmt: skip
    machine = f"{platform.machine()} Linux, {loadgen.cpu_count()} cores{sl.gpu_name()}"
    report = {"machine": machine, "settings": settings, "label": args.label, "rows": rows, "notes": notes}
    text = markdown(report)
    write_report(f"{args.out}-{args.label}" if args.label else args.out, report, text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    return cli(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
