"""Progressive learning (EfficientNetV2, Tan & Le 2021): stages of growing image size and regularization.

Stage i of M trains at size S_i = S_0 + (S_e - S_0) * i / (M - 1), and each regularization knob
moves the same way from its `progressive.start_*` value to the recipe's own value, which the last
stage uses. Small early images make early epochs cheap; weak regularization suits them, since a
small image already carries less detail to overfit on. Evaluation always uses the final size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from core.errors import UserError


@dataclass
class Stage:
    index: int
    first_epoch: int  # 1-based, inclusive
    last_epoch: int
    size: int  # train crop size
    fraction: float  # 0 in the first stage, 1 in the last: where regularization sits between start and final
    augment: dict[str, Any]
    batch_size: int


def _lerp(start: float | None, final: float, fraction: float) -> float:
    return final if start is None else start + (final - start) * fraction


def plan_stages(config: dict[str, Any], crop_size: int) -> list[Stage]:
    """The recipe's stages; a recipe without `progressive.stages` is one stage at the final settings."""
    prog, epochs = config["progressive"], config["train"]["epochs"]
    augment, batch = config["augment"], config["data"]["batch_size"]
    count = prog["stages"]
    if count <= 1:
        return [Stage(0, 1, epochs, crop_size, 1.0, copy.deepcopy(augment), batch)]
    if count > epochs:
        raise UserError(f"progressive.stages = {count} needs at least as many epochs (train.epochs = {epochs})")
    start_size = prog["start_size"] or crop_size // 2
    if not 1 <= start_size <= crop_size:
        raise UserError(f"progressive.start_size must be between 1 and the crop size {crop_size}, got {start_size}")
    sizes = prog["batch_sizes"]
    if sizes and (len(sizes) != count or not all(isinstance(b, int) and b > 0 for b in sizes)):
        raise UserError(f"progressive.batch_sizes needs {count} positive whole numbers (one per stage), got {sizes}")
    stages = []
    for i in range(count):
        fraction = i / (count - 1)
        stage_augment = copy.deepcopy(augment)
        for knob in ("randaugment_magnitude", "mixup_alpha", "cutmix_alpha"):
            stage_augment[knob] = _lerp(prog[f"start_{knob}"], augment[knob], fraction)
        for kind in ("mixup", "cutmix"):
            if stage_augment[f"{kind}_alpha"] <= 0:  # Beta(0, 0) is undefined; alpha 0 means no mixing
                stage_augment[f"{kind}_p"] = 0.0
        stages.append(
            Stage(
                index=i,
                first_epoch=round(epochs * i / count) + 1,
                last_epoch=round(epochs * (i + 1) / count),
                size=round(_lerp(start_size, crop_size, fraction)),
                fraction=fraction,
                augment=stage_augment,
                batch_size=sizes[i] if sizes else batch,
            )
        )
    return stages


def stage_of(stages: list[Stage], epoch: int) -> Stage:
    return next(s for s in stages if s.first_epoch <= epoch <= s.last_epoch)


class DropoutSchedule:
    """Moves every Dropout module's p from `progressive.start_dropout` to the p the model was built with."""

    def __init__(self, model: nn.Module, start: float | None):
        self.start = start
        self.modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        self.final = [m.p for m in self.modules]
        if start is not None and not self.modules:
            raise UserError(
                "progressive.start_dropout is set but the model has no dropout; set model.dropout to its final value"
            )

    def apply(self, stage: Stage) -> None:
        if self.start is None:
            return
        for module, final in zip(self.modules, self.final):
            module.p = _lerp(self.start, final, stage.fraction)
