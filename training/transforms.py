"""Train and eval transforms, built from a checkpoint's `preprocess` dict and the recipe's `augment`.

`eval_transform` is the single definition of evaluation preprocessing (resize the shorter side,
center crop, scale to 0..1, normalize). Export bakes the normalization into the ONNX graph and the
service reproduces the resize/crop; both are tested against this function.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def _to_tensor(preprocess: dict[str, Any]) -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=preprocess["mean"], std=preprocess["std"]),
    ]


def eval_geometry(preprocess: dict[str, Any]) -> v2.Compose:
    """PIL RGB -> PIL RGB at crop_size x crop_size: the resize + center crop of evaluation."""
    interpolation = INTERPOLATIONS[preprocess["interpolation"]]
    return v2.Compose(
        [
            v2.Resize(preprocess["resize_size"], interpolation=interpolation, antialias=True),
            v2.CenterCrop(preprocess["crop_size"]),
        ]
    )


def eval_transform(preprocess: dict[str, Any]) -> v2.Compose:
    """PIL RGB -> normalized float tensor [3, crop, crop]."""
    return v2.Compose([eval_geometry(preprocess), *_to_tensor(preprocess)])


def _augment_steps(preprocess: dict[str, Any], augment: dict[str, Any], size: int) -> list:
    """The random geometry and colour steps of training, producing an image of `size` x `size`."""
    interpolation = INTERPOLATIONS[preprocess["interpolation"]]
    steps: list = []
    if augment["crop"] == "random_resized":
        steps.append(v2.RandomResizedCrop(size, scale=(augment["min_scale"], 1.0), interpolation=interpolation))
    else:
        steps += [v2.Resize(size, interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    if augment["crop_padding"]:
        # reflect padding keeps the borders image-like; zero padding adds black frames eval never has
        steps.append(v2.RandomCrop(size, padding=augment["crop_padding"], padding_mode=augment["padding_mode"]))
    if augment["hflip"]:
        steps.append(v2.RandomHorizontalFlip(augment["hflip"]))
    if augment["rotation"]:
        steps.append(v2.RandomRotation(augment["rotation"], interpolation=interpolation))
    if augment["color_jitter"]:
        c = augment["color_jitter"]
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c))
    if augment["auto_augment"] == "randaugment":
        steps.append(
            v2.RandAugment(
                num_ops=augment["randaugment_num_ops"],
                magnitude=round(augment["randaugment_magnitude"]),
                interpolation=interpolation,
            )
        )
    elif augment["auto_augment"] == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    return steps


def is_random(augment: dict[str, Any]) -> bool:
    """Whether the train pipeline differs from the eval one from one epoch to the next."""
    return bool(
        augment["crop"] == "random_resized" or augment["crop_padding"] or augment["hflip"] or augment["rotation"]
        or augment["color_jitter"] or augment["auto_augment"] != "none" or augment["random_erasing"]
        or augment["cutmix_p"] or augment["mixup_p"]
    )  # fmt: skip


def train_transform(preprocess: dict[str, Any], augment: dict[str, Any]) -> v2.Compose:
    """PIL RGB -> augmented, normalized float tensor [3, crop, crop]; each step switchable."""
    steps = _augment_steps(preprocess, augment, preprocess["crop_size"]) + _to_tensor(preprocess)
    if augment["random_erasing"]:
        steps.append(v2.RandomErasing(augment["random_erasing"]))
    return v2.Compose(steps)


class SharedViews:
    """One augmented image seen by several models, each at its own size and normalization.

    Distillation needs the teacher to judge the very image the student sees. The random steps run
    once at the largest crop size; each model's view is then resized to its crop size and
    normalized with its own mean/std. Without random steps each teacher sees its own eval transform.
    """

    def __init__(self, preprocesses: list[dict[str, Any]], augment: dict[str, Any]):
        if not is_random(augment):
            student = train_transform(preprocesses[0], augment)  # deterministic: resize + center crop
            self.shared, self.views = None, [student, *(eval_transform(p) for p in preprocesses[1:])]
            return
        size = max(p["crop_size"] for p in preprocesses)
        steps = [*_augment_steps(preprocesses[0], augment, size), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if augment["random_erasing"]:
            steps.append(v2.RandomErasing(augment["random_erasing"]))
        self.shared = v2.Compose(steps)
        self.views = [
            v2.Compose(
                ([v2.Resize(p["crop_size"], interpolation=INTERPOLATIONS[p["interpolation"]], antialias=True)]
                 if p["crop_size"] != size else [])
                + [v2.Normalize(mean=p["mean"], std=p["std"])]
            )
            for p in preprocesses
        ]  # fmt: skip

    def __call__(self, image) -> tuple[torch.Tensor, ...]:
        if self.shared is not None:
            image = self.shared(image)
        return tuple(view(image) for view in self.views)
