"""Reliability under faults: a bounded high-concurrency run with bad inputs mixed in, and a killed worker.

    python -m bench.soak [--duration 60] [--concurrency 32] [--bad-share 0.2]

On the digits-sized model of `bench.serve_load` (random weights) behind `bentoml serve`, all on localhost:
  1. clean: good photos only, after a warm-up; the server's resident memory is read after it;
  2. faulty: the same load with `--bad-share` of the requests bad (garbage bytes, a truncated JPEG, a PNG
     whose header claims 8000x8000 pixels, zero bytes). Every good answer must carry the label the graph
     gives in-process, every bad one its 4xx. The p99 of good requests is compared with the clean run,
     and resident memory with its level after the clean run;
  3. kill: under load, the inference worker process is killed (SIGKILL). The report counts the requests
     that failed, the seconds until answers succeed again, and whether any client connection hung.
Writes bench/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen
from bench.common import write_report
from bench.serve_load import ROOT, photos, prepare_models, server


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of each of the clean and faulty runs")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--kill-seconds", type=float, default=20.0, help="length of the worker-kill run")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--work", default="runs/serve_load")
    p.add_argument("--out", default="bench/results/soak")
    return p.parse_args(argv)


def bad_inputs() -> list[tuple[bytes, int]]:
    """(bytes, expected status) for each kind of bad upload."""
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (500, 375), (120, 30, 200)).save(jpeg, "JPEG")
    huge = io.BytesIO()
    Image.new("1", (8000, 8000)).save(huge, "PNG")  # a few kB on the wire, 64 megapixels decoded
    return [
        (os.urandom(2048), 415),
        (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], 400),
        (huge.getvalue(), 413),
        (b"", 400),
    ]


def expected_labels(graph_path: Path, images: list[tuple[str, bytes]]) -> list[str]:
    from export import metadata
    from service.config import Limits
    from service.decode import decode
    from service.runtime import Graph

    graph = Graph(graph_path, "cpu")
    pre = metadata.preprocess_of(graph.meta)
    pixels = np.stack([decode(data, 0, Limits(), pre) for _, data in images])
    return [graph.meta["labels"][i] for i in graph.run(pixels)["probabilities"].argmax(1)]


def rss_bytes(proc) -> int:
    """Resident memory of a server and all its worker processes."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


def inference_worker(proc) -> int:
    """PID of the worker process that runs the `inference` service (the ONNX Runtime sessions)."""
    import psutil

    for p in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "Inference" in " ".join(p.cmdline()) or "inference" in " ".join(p.cmdline()):
                return p.pid
    raise RuntimeError("no inference worker process found under the server")


def kill_run(url: str, proc, good: list[loadgen.Request], seconds: float, clients: int) -> dict[str, Any]:
    """Closed-loop clients with a timeline; the inference worker is killed a third of the way in."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    timeline: list[tuple[float, float, int]] = []  # (start, end, status or -1 for a connection error)
    lock = threading.Lock()
    t0 = time.perf_counter()
    t_end = t0 + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = k
        while time.perf_counter() < t_end:
            req = good[i % len(good)]
            i += 1
            start = time.perf_counter()
            try:
                conn.request("POST", req.path, body=req.body, headers={"Content-Type": req.content_type})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            with lock:
                timeline.append((start - t0, time.perf_counter() - t0, status))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    victim = inference_worker(proc)
    killed_at = time.perf_counter() - t0
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(timeout=seconds + 90)
    hung = sum(t.is_alive() for t in threads)
    try:
        replacement = inference_worker(proc)
    except RuntimeError:
        replacement = None
    spanning = [end - start for start, end, _ in timeline if start <= killed_at <= end]
    after = sorted((e, s) for st, e, s in timeline if e >= killed_at)
    failed = [e for e, s in after if s != 200]
    recovered = None
    if failed:
        last_failure = max(failed)
        ok_after = [e for e, s in after if s == 200 and e > last_failure]
        recovered = round(min(ok_after) - killed_at, 2) if ok_after else None
    statuses: dict[str, int] = {}
    for _, _, s in timeline:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {
        "killed_pid": victim, "killed_at_s": round(killed_at, 2), "requests": len(timeline),
        "failed_after_kill": len(failed), "statuses": statuses,
        "seconds_to_recover": recovered if failed else 0.0, "hung_clients": hung,
        "answered_after_kill": sum(s == 200 for _, s in after), "new_worker_pid": replacement,
        "slowest_request_across_kill_s": round(max(spanning), 2) if spanning else None,
    }  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    os.environ.update(BENTOML_HOME=env["BENTOML_HOME"], BENTOML_DO_NOT_TRACK="true")
    graph = prepare_models(["digits"], work)["digits"]
    images = photos()
    labels = expected_labels(graph, images)
    good = [
        loadgen.Request("/classify", *loadgen.multipart([img]), expect_label=label)
        for img, label in zip(images, labels)
    ]
    bad = [loadgen.Request("/classify", *loadgen.multipart([(f"bad{i}.bin", data)]), expect_status=status)
           for i, (data, status) in enumerate(bad_inputs())]  # fmt: skip
    # every fifth request bad at the default share: interleave so each client meets them all
    step = max(1, round(1 / args.bad_share)) if args.bad_share else 0
    mixed, b = [], 0
    for i in range(len(good) * len(bad)):
        if step and i % step == step - 1:
            mixed.append(bad[b % len(bad)])
            b += 1
        else:
            mixed.append(good[i % len(good)])
    serving = work / "serving-soak.yaml"
    serving.write_text(
        "default_model: digits\nmodels: [digits]\nbatching: {max_batch_size: 64, max_latency_ms: 60000}\n"
    )
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", "service.service:Classifier",
           "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    report: dict[str, Any] = {"settings": vars(args) | {"work": str(work)}}
    with server(cmd, {**env, "SERVING_CONFIG": str(serving)}, work / "serve-soak.log", "/readyz") as (url, proc):
        common = {"concurrency": args.concurrency, "processes": args.client_processes, "warmup": 3.0}
        report["clean"] = loadgen.run(url, good, duration=args.duration, **common)
        rss_clean = rss_bytes(proc)
        report["faulty"] = loadgen.run(url, mixed, duration=args.duration, **common)
        rss_after = rss_bytes(proc)
        report["rss_mb"] = {"after_clean": round(rss_clean / 2**20, 1), "after_faulty": round(rss_after / 2**20, 1),
                            "change": round(rss_after / rss_clean - 1, 4)}  # fmt: skip
        report["p99_change"] = round(report["faulty"]["p99_ms"] / report["clean"]["p99_ms"] - 1, 4)
        report["kill"] = kill_run(url, proc, good, args.kill_seconds, args.concurrency)
    c, f, k = report["clean"], report["faulty"], report["kill"]
    text = f"""# Soak

{args.concurrency} clients, {args.duration:g} s per run, {args.bad_share:.0%} bad requests in the faulty run.

| run | requests | good img/s | p50 ms | p99 ms | unexpected answers | statuses |
|---|---:|---:|---:|---:|---:|---|
| clean | {c["requests"]} | {c["images_per_s"]} | {c["p50_ms"]} | {c["p99_ms"]} | {c["errors"]} | {c["statuses"]} |
| faulty | {f["requests"]} | {f["images_per_s"]} | {f["p50_ms"]} | {f["p99_ms"]} | {f["errors"]} | {f["statuses"]} |

p99 of good requests: {report["p99_change"]:+.1%} against the clean run (target: under +25%).
Resident memory of the server's processes: {report["rss_mb"]["after_clean"]} MB after the clean run,
{report["rss_mb"]["after_faulty"]} MB after the faulty run ({report["rss_mb"]["change"]:+.1%}; target: within 10%).

Worker kill (pid {k["killed_pid"]}, replaced by pid {k["new_worker_pid"]}) at {k["killed_at_s"]} s of
{args.kill_seconds:g} s: {k["failed_after_kill"]} requests failed, answers succeeded again {k["seconds_to_recover"]} s
after the kill, the slowest request in flight at the kill took {k["slowest_request_across_kill_s"]} s,
{k["hung_clients"]} hung client connections, {k["answered_after_kill"]} answered after the kill;
statuses {k["statuses"]}.
"""
    write_report(ROOT / args.out, report, text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    run(_parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
