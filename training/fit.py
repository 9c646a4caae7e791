"""`fit(config, out_dir)`: the training loop that writes a run folder.

    python -m training fit --config configs/digits_resnet18.yaml --out runs/digits-resnet18
    torchrun --nproc_per_node=2 -m training fit --config configs/digits_resnet18.yaml --out runs/ddp

runs/NAME/ gets config.yaml, metrics.csv (a row per epoch), curves.png, best.pt, last.pt and
summary.json. `--resume` continues from last.pt (model, optimizer, scheduler, scaler, EMA, epoch and
RNG state), so a resumed run ends where an uninterrupted one would. The CLI refuses an --out that holds a
run unless --resume or --overwrite is given (training/run_folder.py); `fit()` itself writes where it is told.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from training import checkpoint as ckpt
from training import log, run_folder
from training.config import from_scratch, save_config
from training.data import build_splits, describe, eval_loader, train_loader
from training.distributed import all_mean, barrier, cleanup, init_distributed
from training.ema import EMA
from training.engine import TrainState, evaluate, recompute_batchnorm, train_one_epoch
from training.models import build_model, freeze_backbone, model_from_checkpoint, set_train_mode
from training.optim import build_optimizer, build_scheduler, param_groups
from training.plots import plot_curves
from training.progressive import DropoutSchedule, plan_stages, stage_of
from training.tasks import Task
from training.transforms import eval_transform

METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "ema_val_acc",
    "lr", "images_per_s", "seconds", "stage", "train_size",
]  # fmt: skip
PLOT_EVERY_S = 30.0  # a long run's curves.png is at most this old


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def _write_metrics(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})


@log.to_run_folder
def fit(
    config: dict[str, Any], out_dir: str | Path, resume: bool = False, show: bool = True, task: Task | None = None
) -> dict[str, Any]:
    """Train one model from a resolved config; returns the summary written to summary.json.

    `task` changes what is trained on and how a batch is scored (distillation, pseudo-labels, bootstrap).
    Everything it reports goes to the console and to OUT/train.log.
    """
    task = task or Task()
    info, device = init_distributed(config["device"])
    show = show and info.main
    out = Path(out_dir)
    config, scratch_lines = from_scratch(config)
    seed_everything(config["seed"], config["deterministic"])
    data_cfg, train_cfg = config["data"], config["train"]
    if train_cfg["amp"] == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs CUDA; use bf16 or none on CPU")

    # every refusal about the data, the teachers or the model comes before the first file is written, so a
    # refused run leaves --out as it was (no config.yaml, no train.log)
    splits = build_splits(data_cfg)
    labels = splits.labels
    task.prepare(splits, device)
    model, preprocess, head = build_model(config["model"], len(labels), config["preprocess"])
    if train_cfg["sync_bn"] and info.enabled and device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
    if info.main:
        run_folder.started()  # past every refusal: a run --overwrite replaces goes now
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    if show:  # what the run found, before the first step: a wrong data.root or size shows up here, not in hours
        for line in describe(splits):
            log.info(line)
        log.info(
            f"input: {preprocess['crop_size']} px crops of images resized to {preprocess['resize_size']} px "
            f"({preprocess['interpolation']}); model {config['model']['arch']}, device {device}"
        )
        for line in scratch_lines:
            log.warning(line)
    linear_probe = config["model"]["transfer"] == "linear_probe"
    if linear_probe:
        freeze_backbone(model, head)
    if train_cfg["sync_bn"] and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if train_cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)

    pin = device.type == "cuda"
    stages = plan_stages(config, preprocess["crop_size"])
    dropout = DropoutSchedule(model, config["progressive"]["start_dropout"])
    stage_loaders = []  # one (loader, sampler) per stage: sizes and batch sizes differ
    for stage in stages:
        train_set = task.train_set(splits, dict(preprocess, crop_size=stage.size), stage.augment)
        stage_cfg = dict(data_cfg, batch_size=stage.batch_size)
        stage_loaders.append(train_loader(train_set, stage_cfg, config["seed"], info.rank, info.world, pin))
    steps = [len(stage_loaders[stage_of(stages, e).index][0]) for e in range(1, train_cfg["epochs"] + 1)]
    val_loader = eval_loader(splits.dataset("val", eval_transform(preprocess)), data_cfg, pin)
    bn_loader = eval_loader(splits.dataset("train", eval_transform(preprocess)), data_cfg, pin)

    optimizer = build_optimizer(
        param_groups(model, head, config["optim"], config["model"]["backbone_lr_mult"]), config["optim"]
    )
    scheduler = build_scheduler(optimizer, steps, train_cfg["epochs"], config["schedule"])
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg["amp"] == "fp16")
    ema = EMA(model, train_cfg["ema_decay"]) if train_cfg["ema_decay"] else None

    raw_model = model
    if train_cfg["compile"]:
        model = torch.compile(model)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if pin else None)

    history: list[dict] = []
    best: tuple[float, float] = (-1.0, 0.0)  # (accuracy, -loss) of the selected weights
    start_epoch = 1
    if resume:
        history, best, start_epoch = ckpt.restore(
            ckpt.load(out / "last.pt"), raw_model, optimizer, scheduler, scaler, ema
        )
        if show:
            log.info(f"resumed {out / 'last.pt'} at epoch {start_epoch - 1}")

    criterion = nn.CrossEntropyLoss(label_smoothing=config["optim"]["label_smoothing"])
    train_state = TrainState(
        optimizer, scheduler, scaler, None, ema, device, train_cfg,
        config["optim"]["clip_grad_norm"], lambda: set_train_mode(model, _head_name(model, head), linear_probe),
    )  # fmt: skip
    num_classes = len(labels)
    plotted = time.monotonic()
    for epoch in range(start_epoch, train_cfg["epochs"] + 1):
        stage = stage_of(stages, epoch)
        loader, sampler = stage_loaders[stage.index]
        if epoch == start_epoch or epoch == stage.first_epoch:
            train_state.objective = task.objective(criterion, stage.augment, num_classes)
            dropout.apply(stage)
            if show and len(stages) > 1:
                log.info(f"stage {stage.index + 1}/{len(stages)}: size {stage.size}, batch {stage.batch_size}")
        sampler.set_epoch(epoch)
        train = train_one_epoch(model, loader, train_state, epoch, show)
        train_loss = all_mean(train["loss"], info, device)
        train_acc = all_mean(train["acc"], info, device)
        if info.main:
            for weights in (raw_model, ema.module if ema else None):
                if weights is not None and train_cfg["bn_recompute_batches"]:
                    recompute_batchnorm(weights, bn_loader, device, train_cfg["bn_recompute_batches"], train_cfg["amp"])
            val = evaluate(raw_model, val_loader, device, num_classes, amp=train_cfg["amp"])
            row = {
                "epoch": epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                "val_loss": round(val["loss"], 6), "val_acc": round(val["acc"], 6),
                "val_top5": round(val["top5"], 6), "lr": optimizer.param_groups[-1]["lr"],
                "images_per_s": round(train["images_per_s"] * info.world, 1), "seconds": round(train["seconds"], 2),
                "stage": stage.index + 1, "train_size": stage.size,
            }  # fmt: skip
            selected = val
            if ema is not None:
                selected = evaluate(ema.module, val_loader, device, num_classes, amp=train_cfg["amp"])
                row["ema_val_acc"] = round(selected["acc"], 6)
            history.append(row)
            score = (selected["acc"], -selected["loss"])
            if score > best:
                best = score
                metrics = {"best_epoch": epoch, "val_acc": selected["acc"], "val_loss": selected["loss"]}
                best_pt = ckpt.checkpoint_dict(raw_model, ema, labels, preprocess, config, metrics)
                ckpt.save(best_pt, out / "best.pt")
            last = ckpt.checkpoint_dict(raw_model, ema, labels, preprocess, config, {"val_acc": selected["acc"]})
            ckpt.save(
                ckpt.with_training_state(last, optimizer, scheduler, scaler, ema, epoch, history, best), out / "last.pt"
            )
            _write_metrics(history, out / "metrics.csv")
            # drawing the figure costs about 0.3 s, more than a small epoch (a fifth of a 20-epoch digits run
            # when drawn every epoch): the picture is refreshed at most every PLOT_EVERY_S, and at the end
            if epoch == train_cfg["epochs"] or time.monotonic() - plotted >= PLOT_EVERY_S:
                plot_curves(history, out / "curves.png", title=f"{config['model']['arch']} on {data_cfg['dataset']}")
                plotted = time.monotonic()
            if show:
                ema_text = f"  ema_val_acc {row['ema_val_acc']:.4f}" if ema else ""
                log.info(
                    f"epoch {epoch}/{train_cfg['epochs']}  train_loss {train_loss:.4f}  val_loss {val['loss']:.4f}"
                    f"  val_acc {val['acc']:.4f}{ema_text}  {row['images_per_s']:.0f} img/s  {train['seconds']:.1f}s"
                )
        barrier(info)

    summary = _finish(out, splits, data_cfg, device, config, history, task.record()) if info.main else {}
    barrier(info)
    cleanup(info)
    return summary


def _head_name(model: nn.Module, head: str) -> str:
    """The head's name inside a DDP / compiled wrapper (their inner module is called `module`/`_orig_mod`)."""
    for prefix in ("module._orig_mod.", "module.", "_orig_mod."):
        try:
            model.get_submodule(prefix + head)
            return prefix + head
        except AttributeError:
            continue
    return head


def _finish(out: Path, splits, data_cfg: dict, device: torch.device, config: dict, history: list, extra: dict) -> dict:
    """Evaluate best.pt on the test split, record it in the checkpoint and write summary.json."""
    best = ckpt.load(out / "best.pt")
    summary: dict[str, Any] = {
        "model": config["model"]["arch"],
        "dataset": data_cfg["dataset"],
        "epochs": config["train"]["epochs"],
        "num_classes": best["num_classes"],
        "best_epoch": best["metrics"]["best_epoch"],
        "best_val_acc": best["metrics"]["val_acc"],
        "selected_weights": best["selected_weights"],
        "seed": config["seed"],
        "train_images_per_s": round(statistics.mean(r["images_per_s"] for r in history), 1),
        "train_seconds": round(sum(r["seconds"] for r in history), 1),
        **extra,
    }
    if "test" in splits.parts:
        model = model_from_checkpoint(best).to(device)
        loader = eval_loader(splits.dataset("test", eval_transform(best["preprocess"])), data_cfg, False)
        test = evaluate(model, loader, device, best["num_classes"])
        summary.update(test_acc=test["acc"], test_top5=test["top5"], test_loss=test["loss"])
        best["metrics"].update(test_acc=test["acc"], test_top5=test["top5"])
        ckpt.save(best, out / "best.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(f"summary: {json.dumps(summary)}")
    log.info(wrote_line(out))
    return summary


def wrote_line(out: Path) -> str:
    """Where a run's files went, the last line a run shows: the checkpoint to evaluate and export, its curves
    and its log (the rest of the folder: docs/contract.md, Training CLI)."""
    return f"checkpoint: {out / 'best.pt'}  curves: {out / 'curves.png'}  log: {out / 'train.log'}"


@log.to_run_folder
def fit_runs(config: dict[str, Any], out_dir: str | Path, runs: int, resume: bool = False) -> dict[str, Any]:
    """Repeat a recipe with seeds seed, seed+1, ...; summary.json reports mean and std over runs.

    Each run lives in out/seed<N>/; the run with the best validation accuracy is copied to out/best.pt.
    """
    if runs == 1:
        return fit(config, out_dir, resume=resume)
    out = Path(out_dir)
    results = []
    for i in range(runs):
        run_cfg = copy.deepcopy(config)
        run_cfg["seed"] = config["seed"] + i
        run_dir = out / f"seed{run_cfg['seed']}"
        if resume and (run_dir / "summary.json").exists():
            results.append(json.loads((run_dir / "summary.json").read_text()))
            continue
        results.append(fit(run_cfg, run_dir, resume=resume and (run_dir / "last.pt").exists()))
    if not results[0]:  # not the main process under torchrun
        return {}

    def stats(key: str) -> tuple[float, float]:
        values = [r[key] for r in results]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    summary = {k: results[0][k] for k in ("model", "dataset", "epochs", "num_classes")}
    summary["runs"] = runs
    for key in ("best_val_acc", "test_acc"):
        if key in results[0]:
            summary[key], summary[f"{key}_std"] = stats(key)
    summary["per_run"] = [{k: r.get(k) for k in ("seed", "best_val_acc", "test_acc")} for r in results]
    best_run = max(results, key=lambda r: r["best_val_acc"])
    shutil.copy(out / f"seed{best_run['seed']}" / "best.pt", out / "best.pt")
    save_config(config, out / "config.yaml")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = f"test_acc {summary['test_acc']:.4f} +- {summary['test_acc_std']:.4f}" if "test_acc" in summary else ""
    log.info(f"{runs} runs: best_val_acc {summary['best_val_acc']:.4f} +- {summary['best_val_acc_std']:.4f} {text}")
    log.info(f"checkpoint: {out / 'best.pt'} (seed {best_run['seed']})  curves: {out / 'seed<N>' / 'curves.png'}  "
             f"log: {out / 'train.log'}")  # fmt: skip
    return summary
