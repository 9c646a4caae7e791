"""The README's tables for distillation, self-training, bagging and progressive learning, measured on digits.

    python -m bench.techniques [--seeds 3] [--jobs 4] [--out runs/techniques] [--quick]

Runs the real CLI commands (several at once with --jobs), then writes bench/results/techniques.{json,md}.
Every figure is the test accuracy on the 359 digits test images, mean +- std over seeds.
  - low-label (configs/digits_10pct.yaml, 126 labelled train images): labelled-only training, the same
    with as many optimizer steps as a student takes, Noisy Student iterations, distillation from a
    teacher trained on all labels (with and without the unlabelled images as transfer set), a bag of 5;
  - progressive learning (configs/digits_resnet18_progressive.yaml) against the same recipe at a fixed size.
--quick cuts every run to three epochs to check the pipeline, not to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import write_report

LOW = "configs/digits_10pct.yaml"
FULL = "configs/digits_resnet18.yaml"
PROGRESSIVE = "configs/digits_resnet18_progressive.yaml"
STUDENT_STEPS = 10  # a student sees 1,258 images an epoch against 126: ten times the optimizer steps


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.techniques", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="training runs at once")
    p.add_argument("--out", default="runs/techniques")
    p.add_argument("--workers", type=int, default=0, help="data loader workers per run (0: digits are tiny to decode)")
    p.add_argument("--quick", action="store_true", help="three epochs per run: a pipeline check, not a measurement")
    p.add_argument("--report", default="bench/results/techniques")
    return p.parse_args(argv)


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.out, self.args = Path(args.out), args
        self.common = [f"data.workers={args.workers}"]

    def __call__(self, name: str, *argv: str, epochs: int | None = None) -> dict[str, Any]:
        """`python -m training ARGV --out OUT/name --set ...`; returns the run's summary.json."""
        out = self.out / name
        sets = list(self.common)
        if self.args.quick or epochs:
            sets.append(f"train.epochs={3 if self.args.quick else epochs}")
        extra = [a for a in argv if "=" in a and not a.startswith("-")]
        argv = tuple(a for a in argv if a not in extra)
        # a finished run is reused below; an interrupted one is trained again (--overwrite), or continued (--resume)
        fresh = () if "--resume" in argv else ("--overwrite",)
        cmd = [sys.executable, "-m", "training", *argv, "--out", str(out), *fresh, "--set", *sets, *extra]
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with (out / "log.txt").open("w") as log:
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed; see {out / 'log.txt'}")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        return json.loads((out / "summary.json").read_text())


def _from_teacher(go: Runner, teacher_job, seed: int) -> dict[str, Any]:
    """self-train whose iteration 0 is an existing run: --resume keeps a finished iteration as it is."""
    teacher_job.result()
    run = go.out / f"self_train_strong/seed{seed}"
    if not (run / "iter0").exists():
        shutil.copytree(go.out / f"labelled_long/seed{seed}", run / "iter0")
    return go(f"self_train_strong/seed{seed}", "self-train", "--config", LOW, "--resume", f"seed={seed}")


def _stats(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {std:.4f}"


def run(args: argparse.Namespace) -> None:
    import torch

    from bench.common import device_name

    args.machine = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    for fraction, folder in ((1.0, "data/digits"), (0.1, "data/digits-10pct")):
        subprocess.run(
            [sys.executable, "-m", "training", "data", "digits", "--out", folder, "--label-fraction", str(fraction)],
            check=True,
        )
    go = Runner(args)
    seeds = range(args.seeds)
    low_epochs = 30
    with ThreadPoolExecutor(args.jobs) as pool:
        teacher = pool.submit(go, "teacher", "fit", "--config", FULL)
        jobs: dict[str, Any] = {}
        for s in seeds:
            seed = f"seed={s}"
            jobs[f"self_train/{s}"] = pool.submit(go, f"self_train/seed{s}", "self-train", "--config", LOW, seed)
            jobs[f"long/{s}"] = pool.submit(
                go, f"labelled_long/seed{s}", "fit", "--config", LOW, seed, epochs=low_epochs * STUDENT_STEPS
            )
            jobs[f"fixed/{s}"] = pool.submit(
                go, f"fixed/seed{s}", "fit", "--config", PROGRESSIVE, seed, "progressive.stages=0"
            )
            jobs[f"progressive/{s}"] = pool.submit(go, f"progressive/seed{s}", "fit", "--config", PROGRESSIVE, seed)
        for s in seeds:  # Noisy Student again, from the strong labelled-only model as its teacher (iteration 0)
            jobs[f"self_train_strong/{s}"] = pool.submit(_from_teacher, go, jobs[f"long/{s}"], s)
        jobs["bag"] = pool.submit(go, "bag", "bag", "--config", LOW)
        teacher_ckpt = str(args.out and Path(args.out) / "teacher" / "best.pt")
        teacher_summary = teacher.result()
        for s in seeds:
            seed = f"seed={s}"
            kd = ("distill", "--teacher", teacher_ckpt, "--config", LOW, seed)
            jobs[f"distill/{s}"] = pool.submit(go, f"distill/seed{s}", *kd)
            jobs[f"distill_labelled/{s}"] = pool.submit(go, f"distill_labelled/seed{s}", *kd, "distill.unlabeled=''")
        results = {name: job.result() for name, job in jobs.items()}
    args.wall_seconds = time.perf_counter() - started
    report = _report(args, teacher_summary, results, seeds)
    write_report(args.report, report["figures"], report["markdown"])
    print(report["markdown"])


def _report(args: argparse.Namespace, teacher: dict, results: dict, seeds: range) -> dict[str, Any]:
    def accs(prefix: str, key: str = "test_acc") -> list[float]:
        return [results[f"{prefix}/{s}"][key] for s in seeds]

    def secs(prefix: str) -> float:
        return statistics.mean(results[f"{prefix}/{s}"]["train_seconds"] for s in seeds)

    st = [results[f"self_train/{s}"]["iterations"] for s in seeds]
    iterations = len(st[0])
    rows = {"labelled only (teacher, iteration 0)": [r[0]["test_acc"] for r in st]}
    rows[f"labelled only, {STUDENT_STEPS}x the epochs (a student's steps)"] = accs("long")
    for i in range(1, iterations):
        rows[f"self-training iteration {i} (soft pseudo-labels)"] = [r[i]["test_acc"] for r in st]
    seconds = {name: "" for name in rows}
    seconds[next(iter(rows))] = round(statistics.mean(r[0]["train_seconds"] for r in st), 1)
    seconds[list(rows)[1]] = round(secs("long"), 1)
    for i in range(1, iterations):
        seconds[list(rows)[1 + i]] = round(statistics.mean(r[i]["train_seconds"] for r in st), 1)
    strong = [results[f"self_train_strong/{s}"]["iterations"] for s in seeds]
    name = f"self-training from the {STUDENT_STEPS}x-epochs model as teacher, iteration 1"
    rows[name] = [r[-1]["test_acc"] for r in strong]
    seconds[name] = round(statistics.mean(r[-1]["train_seconds"] for r in strong), 1)
    gain = statistics.mean(r[-1]["test_acc"] - r[0]["test_acc"] for r in st)
    strong_gain = statistics.mean(r[-1]["test_acc"] - r[0]["test_acc"] for r in strong)
    kd_rows = {
        "teacher: digits_resnet18 on all 1,258 labels (seed 0)": [teacher["test_acc"]],
        "student alone on 126 labels": [r[0]["test_acc"] for r in st],
        "student distilled, 126 labelled images": accs("distill_labelled"),
        "student distilled, + 1,132 unlabelled images": accs("distill"),
    }
    bag = results["bag"]
    prog_rows = {"fixed 32 px": accs("fixed"), "progressive 16 -> 24 -> 32 px": accs("progressive")}
    prog_secs = {"fixed 32 px": secs("fixed"), "progressive 16 -> 24 -> 32 px": secs("progressive")}

    def table(rows: dict[str, list[float]], extra: dict[str, Any] | None = None, extra_name: str = "") -> str:
        head = "| | test accuracy |" + (f" {extra_name} |" if extra else "")
        line = "| --- | --- |" + (" --- |" if extra else "")
        body = [f"| {k} | {_stats(v)} |" + (f" {extra[k]} |" if extra else "") for k, v in rows.items()]
        return "\n".join([head, line, *body])

    n = len(seeds)
    markdown = f"""# Training techniques on digits ({n} seeds, mean +- std; test split, 359 images)

Machine: {args.machine}; {args.jobs} runs at a time; {args.wall_seconds:.0f} s in all.

{"Quick pipeline check (3 epochs per run): not a measurement." if args.quick else ""}

## Self-training (Noisy Student), 10% of the labels

{table(rows, seconds, "train seconds per model")}

Mean gain of self-training over its own teacher: {gain:+.4f} from the labelled-only recipe,
{strong_gain:+.4f} from the {STUDENT_STEPS}x-epochs teacher.

## Distillation, 10% of the labels

{table(kd_rows)}

## Bagging, 10% of the labels (5 members, bootstrap resamples, seed 0)

| | test accuracy |
| --- | --- |
| members | {bag["member_acc_mean"]:.4f} +- {bag["member_acc_std"]:.4f} |
| soft vote | {bag["soft_vote_acc"]:.4f} ({bag["gain_soft"]:+.4f}) |
| hard vote | {bag["hard_vote_acc"]:.4f} ({bag["gain_hard"]:+.4f}) |

## Progressive learning, all labels, 12 epochs

{table(prog_rows, {k: f"{v:.1f}" for k, v in prog_secs.items()}, "train seconds")}
"""
    figures = {
        "machine": args.machine, "seeds": n, "quick": args.quick, "self_training": rows,
        "self_training_seconds": seconds, "self_training_gain": gain, "self_training_strong_gain": strong_gain,
        "distillation": kd_rows, "bag": bag,
        "progressive": prog_rows, "progressive_seconds": prog_secs,
    }  # fmt: skip
    return {"figures": figures, "markdown": markdown}


def main(argv: list[str] | None = None) -> int:
    run(_parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
