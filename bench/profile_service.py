"""Where the service's time goes under load, measured with py-spy (a sampling profiler), not guessed.

    python -m bench.profile_service [--concurrency 16] [--seconds 10]

Serves the digits-sized model of `bench.serve_load`, loads it with closed-loop clients, and records
every server process (the arbiter and the workers) with `py-spy record --threads` at the same time.
Prints, per process, the samples of each thread (the event loop is `MainThread`, decoding runs on
`asyncio_*`, session calls on `onnxruntime_0`) and the functions holding the most samples (inclusive,
so a caller counts its callees), and writes the collapsed stacks to bench/results/profile-<pid>.txt
(flame-graph input; the first frame of each stack names its thread).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
from pathlib import Path

from bench import loadgen
from bench.common import cli
from bench.serve_load import ROOT, SERVE, photos, prepare_models, process_tree, server, small_images, store_env


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile_service", description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--ensemble", action="store_true", help="load /ensemble (two members) instead of /classify")
    p.add_argument("--idle", action="store_true", help="sample idle threads too: where time is spent waiting")
    p.add_argument("--images", default="photos", choices=["photos", "small"], help="500x375 photos or 32x32 PNGs")
    p.add_argument("--work", default="runs/serve_load")
    p.add_argument("--out", default="bench/results")
    return p.parse_args(argv)


def top_functions(collapsed: str, top: int) -> tuple[int, list[tuple[str, int]]]:
    """py-spy's collapsed stacks ("a;b;c 12") -> (total samples, [(frame, samples that include it)])."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] += n
    threads = [(f, n) for f, n in inclusive.most_common() if f.startswith("thread (")]
    return total, threads + [(f, n) for f, n in inclusive.most_common(top) if not f.startswith("thread (")]


def run(args: argparse.Namespace) -> None:

    work, env = store_env(args.work)
    prepare_models(["digits"], work)
    images = photos() if args.images == "photos" else small_images(work)
    if args.ensemble:
        requests = [loadgen.Request("/ensemble", *loadgen.multipart([img], {"ensemble": "pair"})) for img in images]
    else:
        requests = [loadgen.Request("/classify", *loadgen.multipart([img])) for img in images]
    serving = work / "serving-profile.yaml"
    serving.write_text(
        "default_model: digits\nmodels: [digits, digits-b]\nensembles: {pair: {members: [digits, digits-b]}}\n"
        "batching: {max_batch_size: 64, max_latency_ms: 60000}\n"
    )
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    with server(SERVE, {**env, "SERVING_CONFIG": str(serving)}, work / "serve-profile.log", "/readyz") as (url, proc):
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(loadgen.run(
            url, requests, concurrency=args.concurrency, duration=args.seconds + 2, warmup=2.0)))  # fmt: skip
        load.start()
        threading.Event().wait(2.5)
        procs = process_tree(proc)
        recorders = []
        for p in procs:
            path = out / f"profile-{p.pid}.txt"
            record = [spy, "record", "--pid", str(p.pid), "--duration", str(int(args.seconds)), "--format", "raw",
                      "--output", str(path), "--nonblocking", "--threads",
                      *(["--idle"] if args.idle else [])]  # fmt: skip
            recorders.append((p, path, subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for _, _, r in recorders:
            r.wait()
        load.join()
    print(f"load: {result.get('images_per_s')} img/s, p50 {result.get('p50_ms')} ms, errors {result.get('errors')}")
    for p, path, _ in recorders:
        if not path.exists():
            continue
        total, frames = top_functions(path.read_text(), args.top)
        name = " ".join(p.cmdline()[-6:]) if p.is_running() else str(p.pid)
        print(f"\n== pid {p.pid} ({name}): {total} samples -> {path}")
        for frame, n in frames:
            print(f"{100 * n / max(total, 1):5.1f}%  {frame}")


def main(argv: list[str] | None = None) -> int:
    return cli(run, _parse, argv)


if __name__ == "__main__":
    sys.exit(main())
