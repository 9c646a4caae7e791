"""One training epoch and one evaluation pass; the same `evaluate` serves plain and EMA weights."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training import log
from training.ema import EMA
from training.mix import BatchMixer

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


class CrossEntropyObjective:
    """The ordinary objective: cross-entropy against hard labels [N] or soft targets [N, C], after CutMix/MixUp.

    An objective maps (model, batch) to (loss, logits, hard labels for the accuracy); distillation
    (`training.kd`) is the other one.
    """

    def __init__(self, criterion: nn.Module, mixer: BatchMixer):
        self.criterion, self.mixer = criterion, mixer

    def __call__(self, model: nn.Module, batch, device: torch.device, memory_format) -> tuple:
        images, targets = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        hard = targets if targets.ndim == 1 else targets.argmax(1)
        if self.mixer.active:
            images, targets = self.mixer(images, targets)
            hard = targets.argmax(1)
        logits = model(images)
        return self.criterion(logits, targets), logits, hard


@dataclass
class TrainState:
    """What one epoch needs besides the model and data; owned by `fit`."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    objective: Any  # CrossEntropyObjective or training.kd.DistillationObjective
    ema: EMA | None
    device: torch.device
    train_cfg: dict[str, Any]
    clip_grad_norm: float = 0.0
    set_train_mode: Any = field(default=None)


def train_one_epoch(model: nn.Module, loader, state: TrainState, epoch: int, show: bool = True) -> dict[str, float]:
    """Returns mean loss, accuracy against the (possibly mixed) target's argmax, and images/s."""
    state.set_train_mode()
    cfg, device = state.train_cfg, state.device
    memory_format = torch.channels_last if cfg["channels_last"] else torch.preserve_format
    total_loss = correct = seen = 0.0
    start = time.perf_counter()
    show = log.bars_on(show)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        with autocast(device, cfg["amp"]):
            loss, logits, hard = state.objective(model, batch, device, memory_format)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if state.clip_grad_norm:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), state.clip_grad_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(model)
        n = hard.shape[0]
        total_loss += float(loss.detach()) * n
        correct += float((logits.detach().argmax(1) == hard).sum())
        seen += n
        if show and (step % cfg["log_every"] == 0 or step == len(loader) - 1):
            bar.set_postfix(
                loss=f"{total_loss / seen:.4f}",
                acc=f"{correct / seen:.3f}",
                lr=f"{state.optimizer.param_groups[-1]['lr']:.2e}",
                img_s=f"{seen / (time.perf_counter() - start):.0f}",
            )
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / seen, "acc": correct / seen, "images_per_s": seen / elapsed, "seconds": elapsed}


@torch.no_grad()
def predict(
    model: nn.Module, loader, device: torch.device, amp: str = "none", tta_hflip: bool = False, show: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] (float32, CPU) and labels [N] for a whole loader."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not log.bars_on(show), dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images).float()
            if tta_hflip:  # average probabilities of the image and its mirror, back in log space
                flipped = model(images.flip(-1)).float()
                logits = ((logits.softmax(1) + flipped.softmax(1)) / 2).log()
        all_logits.append(logits.cpu())
        all_labels.append(labels)
    return torch.cat(all_logits), torch.cat(all_labels)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """top-1, top-5, cross-entropy loss and the confusion matrix (rows: true, columns: predicted)."""
    pred = logits.argmax(1)
    k = min(5, num_classes)
    top5 = (logits.topk(k, 1).indices == labels[:, None]).any(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, -1)
    return {
        "acc": float((pred == labels).float().mean()),
        "top5": float(top5.float().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "n": int(labels.numel()),
        "confusion": confusion,
    }


def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, **kwargs) -> dict[str, Any]:
    logits, labels = predict(model, loader, device, **kwargs)
    return metrics_from_logits(logits, labels, num_classes)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader, device: torch.device, batches: int, amp: str = "none") -> None:
    """BatchNorm running statistics replaced by their plain average over the first `batches` batches of `loader`.

    A running average (momentum 0.1) trails the weights it describes by about ten steps. From scratch, with a
    few steps an epoch, the weights move faster than that, and a deep body evaluated with the lagging statistics
    answers at chance while training on its own batch statistics learns: EfficientNetV2-S on the bundled
    photos, 8 epochs of 8 steps, val 0.17 with them and 0.80 with them recomputed ("precise BN", as pycls and
    detectron2 do). The global RNG is left as it was: resuming stays bit-identical.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()  # dropout and stochastic depth off: the statistics of the activations evaluation will see
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    with torch.random.fork_rng(devices=[]):  # a DataLoader's iterator draws its base seed from the global RNG
        for i, (images, _) in enumerate(loader):
            if i == batches:
                break
            with autocast(device, amp):
                model(images.to(device, non_blocking=True))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
