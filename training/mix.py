"""Batch-level CutMix and MixUp with soft targets.

Per batch one of {CutMix, MixUp, nothing} is drawn with probabilities (cutmix_p, mixup_p, rest),
like timm's Mixup(switch_prob). Randomness comes from torch's global generator so that a resumed
run replays the same draws.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import UserError


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def cutmix(images: torch.Tensor, onehot: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box from the batch rolled by one; targets weighted by the pasted area."""
    lam = _beta(alpha)
    h, w = images.shape[-2:]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images.roll(1, 0)[..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept after clipping
    return mixed, lam * onehot + (1 - lam) * onehot.roll(1, 0)


def mixup(images: torch.Tensor, onehot: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    lam = _beta(alpha)
    return lam * images + (1 - lam) * images.roll(1, 0), lam * onehot + (1 - lam) * onehot.roll(1, 0)


class BatchMixer:
    """Callable on (images, labels or soft targets) -> (images, soft targets [N, C] summing to one)."""

    def __init__(self, augment: dict[str, Any], num_classes: int):
        self.cutmix_p, self.cutmix_alpha = augment["cutmix_p"], augment["cutmix_alpha"]
        self.mixup_p, self.mixup_alpha = augment["mixup_p"], augment["mixup_alpha"]
        self.num_classes = num_classes
        if self.cutmix_p + self.mixup_p > 1:
            raise UserError("augment.cutmix_p + augment.mixup_p must not exceed 1")

    @property
    def active(self) -> bool:
        return self.cutmix_p > 0 or self.mixup_p > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # soft targets (pseudo-labels) are mixed as they are
        soft = labels if labels.ndim == 2 else F.one_hot(labels, self.num_classes)
        onehot = soft.to(images.dtype)
        u = float(torch.rand(()))
        if u < self.cutmix_p:
            return cutmix(images, onehot, self.cutmix_alpha)
        if u < self.cutmix_p + self.mixup_p:
            return mixup(images, onehot, self.mixup_alpha)
        return images, onehot
