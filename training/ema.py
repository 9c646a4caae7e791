"""Exponential moving average of model weights, evaluated beside the model every epoch."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`ema = decay * ema + (1 - decay) * weights` after each optimizer step; buffers (BatchNorm
    statistics) are averaged the same way; integer buffers (BatchNorm's step count) are copied. The decay
    warms up as `min(decay, (1 + n) / (10 + n))` after n updates, the `num_updates` rule of TensorFlow's
    `tf.train.ExponentialMovingAverage`, so a short run is not dominated by the random init."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.detach(), 1.0 - decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates
