"""Reliability under faults: a bounded high-concurrency run with bad inputs mixed in, and a killed worker.

    python -m bench.soak [--duration 60] [--concurrency 32] [--bad-share 0.2]

On the digits-sized model of `bench.serve_load` (random weights) behind `bentoml serve`, all on localhost:
  1. clean: good photos only, after a warm-up; the server's resident memory is read after it;
  2. faulty: the same load with `--bad-share` of the requests bad (garbage bytes, a truncated JPEG, a PNG
     whose header claims 8000x8000 pixels, zero bytes). Every good answer must carry the label the graph
     gives in-process, every bad one its 4xx. The p99 of good requests is compared with the clean run,
     and resident memory with its level after the clean run;
  3. kill: under load, a worker process of the service is killed (SIGKILL). The report counts the requests
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
from bench.common import cli, write_report
from bench.serve_load import ROOT, SERVE, photos, prepare_models, process_tree, rss_bytes, server, store_env


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of each of the clean and faulty runs")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--kill-seconds", type=float, default=20.0, help="length of the worker-kill run")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="service worker processes (serving.yaml workers)")
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
    from core import metadata
    from service.config import Limits
    from service.decode import decode
    from service.runtime import Graph

    graph = Graph(graph_path, "cpu")
    pre = metadata.preprocess_of(graph.meta)
    pixels = np.stack([decode(data, 0, Limits(), pre) for _, data in images])
    return [graph.meta["labels"][i] for i in graph.run(pixels)["probabilities"].argmax(1)]


def service_workers(proc) -> list[int]:
    """PIDs of the service's worker processes (`--service-name classifier`), not the arbiter."""
    import psutil

    pids = []
    for p in process_tree(proc)[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            if "classifier" in p.cmdline():
                pids.append(p.pid)
    if not pids:
        raise RuntimeError("no service worker process found under the server")
    return pids


def kill_run(url: str, proc, good: list[loadgen.Request], seconds: float, clients: int, processes: int) -> dict:
    """Closed-loop load with a timeline; a service worker is killed a third of the way in."""
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(loadgen.run(
        url, good, concurrency=clients, duration=seconds, warmup=0.0, processes=processes, timeline=True)),
        daemon=True)  # fmt: skip
    load.start()
    time.sleep(0.5 + seconds / 3)  # loadgen starts its clock 0.5 s after the call
    before = service_workers(proc)
    victim = before[0]
    killed_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    load.join(timeout=seconds + 360)  # beyond loadgen's 300-s request timeout: a client that hangs
    if load.is_alive():
        return {"killed_pid": victim, "hung": True}
    try:  # a new pid among the workers: with several, the others were there all along
        replacement = next((pid for pid in service_workers(proc) if pid not in before), None)
    except RuntimeError:
        replacement = None
    timeline = result["timeline"]
    after = [(end, status) for _, end, status in timeline if end >= killed_at]
    failed = [end for end, status in after if status != 200]
    recovered = 0.0
    if failed:
        ok_after = [end for end, status in after if status == 200 and end > max(failed)]
        recovered = round(min(ok_after) - killed_at, 2) if ok_after else None
    spanning = [end - start for start, end, _ in timeline if start <= killed_at <= end]
    return {
        "killed_pid": victim, "new_worker_pid": replacement, "hung": False,
        "killed_at_s": round(killed_at - timeline[0][0], 2) if timeline else None,
        "requests": len(timeline), "statuses": result["statuses"], "failed_after_kill": len(failed),
        "seconds_to_recover": recovered, "answered_after_kill": sum(status == 200 for _, status in after),
        "slowest_request_across_kill_s": round(max(spanning), 2) if spanning else None,
    }  # fmt: skip


def run(args: argparse.Namespace) -> None:
    work, env = store_env(args.work)
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
        f"default_model: digits\nmodels: [digits]\nworkers: {args.workers}\n"
        "batching: {max_batch_size: 64, max_latency_ms: 60000}\n"
    )
    report: dict[str, Any] = {"settings": vars(args) | {"work": str(work)}}
    with server(SERVE, {**env, "SERVING_CONFIG": str(serving)}, work / "serve-soak.log", "/readyz") as (url, proc):
        common = {"concurrency": args.concurrency, "processes": args.client_processes, "warmup": 3.0}
        report["clean"] = loadgen.run(url, good, duration=args.duration, **common)
        rss_clean = rss_bytes(process_tree(proc))
        report["faulty"] = loadgen.run(url, mixed, duration=args.duration, **common)
        rss_after = rss_bytes(process_tree(proc))
        report["rss_mb"] = {"after_clean": round(rss_clean / 2**20, 1), "after_faulty": round(rss_after / 2**20, 1),
                            "change": round(rss_after / rss_clean - 1, 4)}  # fmt: skip
        report["p99_change"] = round(report["faulty"]["p99_ms"] / report["clean"]["p99_ms"] - 1, 4)
        report["kill"] = kill_run(url, proc, good, args.kill_seconds, args.concurrency, args.client_processes)
    c, f, k = report["clean"], report["faulty"], report["kill"]
    text = f"""# Soak

{args.concurrency} clients, {args.duration:g} s per run, {args.bad_share:.0%} bad requests in the faulty run,
{args.workers} service worker(s).

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
{"a client hung" if k["hung"] else "no client hung"}, {k["answered_after_kill"]} answered after the kill;
statuses {k["statuses"]}.
"""
    write_report(ROOT / args.out, report, text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    sys.exit(main())
