"""Open loop at a fixed rate against `bentoml serve` of the digits model (one worker): latency at a load that
does not move between runs, to compare two commits.

    git worktree add --detach /tmp/before OLD_COMMIT
    python -m bench.open_loop --rate 150 --label before --tree /tmp/before
    python -m bench.open_loop --rate 150 --label after

`bench.serve_load` runs its open loop at half of each run's own maximum, and that maximum moves by 10-30% between
runs on a shared machine, so its p50s compare loads as much as code. Here the rate is given. The server is
bench/serve_load.py's (its serving.yaml, store and photos), run from `--tree`'s service; after a short closed-loop
warm-up, `--repeats` open-loop runs of `--duration` s each, then a closed loop at 16 clients for scale. Writes
<out>-<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import loadgen
from bench import serve_load as sl
from bench.common import cli, write_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=150.0, help="requests/s, due at fixed times")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--label", default="run", help="names this tree's figures (before, after)")
    p.add_argument("--tree", type=Path, default=sl.ROOT, help="the checkout whose service is served")
    p.add_argument("--work", default="runs/serve-bench", help="serve_load's work folder: models, store, logs")
    p.add_argument("--out", default="bench/results/open_loop")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> None:
    work, env = sl.store_env(args.work)
    sl.prepare_models(["digits"], work)
    serving = work / "serving-open-loop.yaml"
    serving.write_text(sl.serving_yaml("digits", sl._parse(["--models", "digits"]), 1, 0))
    single = [loadgen.Request("/classify", *loadgen.multipart([img], {"model": "digits"})) for img in sl.photos()]
    runs: list[dict[str, Any]] = []
    tree = args.tree.resolve()
    serve_env = {**env, "SERVING_CONFIG": str(serving), "PYTHONPATH": str(tree)}
    with sl.server(sl.SERVE, serve_env, work / f"serve-open-loop-{args.label}.log", "/readyz", cwd=tree) as (url, _):
        loadgen.run(url, single, concurrency=4, duration=3, warmup=1)
        for _ in range(args.repeats):
            runs.append(loadgen.run(url, single, rate=args.rate, duration=args.duration, warmup=2))
        closed = loadgen.run(url, single, concurrency=16, duration=5, warmup=1)
    lines = [f"# Open loop at {args.rate}/s, digits, one worker ({args.label})", "",
             "| run | p50 ms | p99 ms | max ms | errors |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['errors']} |")
    lines += ["", f"closed loop, 16 clients: {closed['requests_per_s']} requests/s"]
    print("\n".join(lines), flush=True)
    write_report(f"{args.out}-{args.label}", {"rate": args.rate, "open": runs, "closed_16": closed}, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return cli(measure, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
