"""Training throughput (images/s) of torchvision architectures on the current device.

Each timed step is a full training step on synthetic random tensors that already sit on the device:
forward under autocast, CrossEntropyLoss, backward and an AdamW step. There is no dataset, decoding,
augmentation or host-to-device copy, so the figures measure model compute only; a real run is slower
whenever its data loader cannot keep up.

Examples:

    # defaults: resnet18 resnet34 resnet50 efficientnet_v2_s at 224px, batch 32, fp32
    python -m bench.train_throughput

    # what `make bench` runs (small enough for a CPU)
    python -m bench.train_throughput --arch resnet18 resnet50 efficientnet_v2_s --size 64 --batch 16 --steps 5

    # GPU with bf16 autocast and channels_last, report written to bench/results/h100_bf16.{json,md}
    python -m bench.train_throughput --device cuda --amp bf16 --channels-last --batch 128 --out bench/results/h100_bf16

Writes `<out>.json` (settings plus one dict per architecture) and `<out>.md` (the same table as stdout).
Figures from different machines, or from a machine that is busy with something else, are not comparable.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from typing import Any

import torch
from torch import nn

from bench.common import cli, device_name, sync, write_report
from core.errors import UserError
from training.config import DEFAULTS
from training.distributed import resolve_device
from training.engine import autocast
from training.models import build_model, supported_archs

DEFAULT_ARCHS = ["resnet18", "resnet34", "resnet50", "efficientnet_v2_s"]


def bench_arch(
    arch: str,
    device: torch.device,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    amp: str = "none",
    channels_last: bool = False,
    num_classes: int = 100,
) -> dict[str, Any]:
    """Time `steps` training steps of `arch` after `warmup` untimed ones; returns one result row."""
    model_cfg = copy.deepcopy(DEFAULTS["model"])
    model_cfg.update(arch=arch, pretrained="none")
    model, _, _ = build_model(model_cfg, num_classes)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format).train()
    params = sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    criterion = nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = criterion(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start

    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "arch": arch,
        "params_m": round(params / 1e6, 2),
        "images_per_s": round(batch * steps / elapsed, 2),
        "ms_per_step": round(1000 * elapsed / steps, 2),
        "peak_mem_gib": None if peak is None else round(peak, 3),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The result rows as a markdown table."""
    lines = [
        "| arch | params (M) | images/s | ms/step | peak CUDA mem (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        lines.append(
            f"| {r['arch']} | {r['params_m']:.2f} | {r['images_per_s']:.1f} | {r['ms_per_step']:.1f} | {peak} |"
        )
    return "\n".join(lines)


def settings_line(settings: dict[str, Any]) -> str:
    return (
        f"size {settings['size']}, batch {settings['batch']}, steps {settings['steps']} "
        f"(warmup {settings['warmup']}), amp {settings['amp']}, channels_last {settings['channels_last']}, "
        f"num_classes {settings['num_classes']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_throughput",
        description="Training images/s per architecture on synthetic data (model compute only, no data loading).",
    )
    p.add_argument("--arch", nargs="+", default=DEFAULT_ARCHS, help="torchvision model names")
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the clock starts")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype (fp16: CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last memory format")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--out", default="bench/results/train_throughput", help="writes <out>.json and <out>.md")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark every `args.arch`, print the table and write the reports; returns the JSON report."""
    for name, value, low in (("size", args.size, 1), ("batch", args.batch, 1), ("steps", args.steps, 1),
                             ("warmup", args.warmup, 0), ("num-classes", args.num_classes, 1)):  # fmt: skip
        if value < low:
            raise UserError(f"--{name} must be at least {low}, got {value}")
    unknown = [a for a in args.arch if a not in supported_archs()]
    if unknown:
        raise UserError(f"unknown --arch {', '.join(unknown)}; supported: {', '.join(supported_archs())}")
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs CUDA (the device here is cpu); use --amp bf16 or none")

    torch.manual_seed(0)
    settings = {
        "device": str(device),
        "device_name": device_name(device),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "num_classes": args.num_classes,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    header = f"{settings['device_name']} [{device}], torch {torch.__version__}"
    print(f"device: {header}")
    print(f"settings: {settings_line(settings)}")
    print("synthetic data on the device: model compute only, no data loading", flush=True)

    rows = []
    for arch in args.arch:
        row = bench_arch(
            arch, device, args.size, args.batch, args.steps, args.warmup, args.amp, args.channels_last,
            args.num_classes,
        )  # fmt: skip
        print(f"  {arch}: {row['images_per_s']:.1f} images/s", flush=True)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model is gone; start the next peak from an empty cache
    table = markdown_table(rows)
    print()
    print(table)

    report = {"settings": settings, "results": rows}
    write_report(
        args.out,
        report,
        f"# Training throughput on {header}\n\n"
        f"{settings_line(settings)}; synthetic data (model compute only, no data loading); {settings['time']}\n\n"
        f"{table}\n",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return cli(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
