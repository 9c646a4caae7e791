"""Optimizer parameter groups and learning-rate schedules (stepped once per iteration)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.models import head_parameters


def param_groups(model: nn.Module, head: str, optim: dict[str, Any], backbone_lr_mult: float) -> list[dict]:
    """Four groups: (body | head) x (decay | no decay). Norm weights and biases (ndim <= 1) get no
    weight decay; the pretrained body runs at `backbone_lr_mult` times the head's learning rate."""
    head_ids = head_parameters(model, head)
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim > 1), []).append(p)
    return [
        {
            "params": params,
            "lr": optim["lr"] * (1.0 if is_head else backbone_lr_mult),
            "weight_decay": optim["weight_decay"] if decay else 0.0,
        }
        for (is_head, decay), params in sorted(groups.items())
    ]


def build_optimizer(groups: list[dict], optim: dict[str, Any]) -> torch.optim.Optimizer:
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"])
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))


def _epoch_position(step: int, steps_per_epoch: Sequence[int]) -> float:
    """Epochs elapsed at iteration `step`, fractional; epochs may have different lengths (progressive stages)."""
    for epoch, steps in enumerate(steps_per_epoch):
        if step < steps:
            return epoch + step / steps
        step -= steps
    return float(len(steps_per_epoch))


def lr_factor(step: int, steps_per_epoch: int | Sequence[int], epochs: int, schedule: dict[str, Any]) -> float:
    """Multiplier of the base learning rate at iteration `step` (linear warmup, then the schedule).

    `steps_per_epoch` is one number, or one per epoch when batch sizes change between stages.
    """
    if isinstance(steps_per_epoch, int):
        steps_per_epoch = [steps_per_epoch] * epochs
    position = _epoch_position(step, steps_per_epoch)
    warmup = schedule["warmup_epochs"]
    if position < warmup:
        start = schedule["warmup_start_factor"]
        return start + (1.0 - start) * position / warmup
    name = schedule["name"]
    if name == "step":
        # decays at epoch boundaries, counted from the start of training as torch's StepLR does
        return schedule["gamma"] ** (int(position) // schedule["step_size"])
    if name == "cosine":
        progress = min((position - warmup) / max(epochs - warmup, 1e-9), 1.0)
        floor = schedule["min_lr_factor"]
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int | Sequence[int], epochs: int, schedule: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule["name"] == "onecycle":
        total = sum(steps_per_epoch) if not isinstance(steps_per_epoch, int) else epochs * steps_per_epoch
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=max(schedule["warmup_epochs"] / epochs, 1.0 / total),
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, schedule))
