"""Optimizer parameter groups and learning-rate schedules (stepped once per iteration)."""

from __future__ import annotations

import math
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


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: dict[str, Any]) -> float:
    """Multiplier of the base learning rate at iteration `step` (linear warmup, then the schedule)."""
    warmup = int(schedule["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        start = schedule["warmup_start_factor"]
        return start + (1.0 - start) * step / warmup
    name = schedule["name"]
    if name == "step":
        # decays at epoch boundaries, counted from the start of training as torch's StepLR does
        return schedule["gamma"] ** ((step // steps_per_epoch) // schedule["step_size"])
    if name == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        progress = min((step - warmup) / total, 1.0)
        floor = schedule["min_lr_factor"]
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, schedule: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule["name"] == "onecycle":
        total = epochs * steps_per_epoch
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=max(schedule["warmup_epochs"] / epochs, 1.0 / total),
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, schedule))
