"""What `fit` trains on and how it scores a batch.

`Task` is plain fine-tuning on the train split. `SupervisedTask` adds a bootstrap resample (bagging) and
extra soft-labelled images (self-training's pseudo-labels); `training.kd.DistillationTask` is the other task.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from core.errors import UserError
from training.data import ImageFiles, Splits, Transformed
from training.engine import CrossEntropyObjective
from training.mix import BatchMixer
from training.transforms import train_transform


class OneHot(Dataset):
    """(image, int label) -> (image, one-hot float vector), to sit beside soft-labelled data in one batch."""

    def __init__(self, dataset: Dataset, num_classes: int):
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        image, label = self.dataset[i]
        target = torch.zeros(self.num_classes)
        target[label] = 1.0
        return image, target


class SoftLabelled(Dataset):
    """Image files with a target distribution each (pseudo-labels), decoded like every other image."""

    def __init__(self, paths: list[Path], targets: np.ndarray, transform: Callable):
        self.files = Transformed(ImageFiles([(p, -1) for p in paths]), range(len(paths)), transform)
        self.targets = torch.as_tensor(targets, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.files[i][0], self.targets[i]


class Task:
    """The supervised default; subclasses change the data, the objective, or both."""

    def prepare(self, splits: Splits, device: torch.device) -> None:
        """Checks against the data and loading of anything else the task needs (teachers)."""

    def train_set(self, splits: Splits, preprocess: dict[str, Any], augment: dict[str, Any]) -> Dataset:
        """Training items; `preprocess["crop_size"]` is the size to train at (it changes per progressive stage)."""
        return splits.dataset("train", train_transform(preprocess, augment))

    def objective(self, criterion: nn.Module, augment: dict[str, Any], num_classes: int) -> Callable:
        return CrossEntropyObjective(criterion, BatchMixer(augment, num_classes))

    def record(self) -> dict[str, Any]:
        """Facts about the task for summary.json."""
        return {}


class SupervisedTask(Task):
    """Train split (or a bootstrap resample of it), plus optional soft-labelled extra images."""

    def __init__(self, bootstrap_seed: int | None = None, extra: tuple[list[Path], np.ndarray] | None = None):
        self.bootstrap_seed, self.extra = bootstrap_seed, extra

    def train_set(self, splits: Splits, preprocess: dict[str, Any], augment: dict[str, Any]) -> Dataset:
        transform = train_transform(preprocess, augment)
        base, indices = splits.parts["train"].base, splits.parts["train"].indices
        if self.bootstrap_seed is not None:
            rng = np.random.default_rng(self.bootstrap_seed)
            indices = np.sort(rng.choice(indices, size=len(indices), replace=True))
        labelled = Transformed(base, indices, transform)
        if self.extra is None:
            return labelled
        paths, targets = self.extra
        if targets.shape[1] != len(splits.labels):
            raise UserError(f"the soft labels have {targets.shape[1]} classes, the data has {len(splits.labels)}")
        return ConcatDataset([OneHot(labelled, len(splits.labels)), SoftLabelled(paths, targets, transform)])

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bootstrap_seed is not None:
            out["bootstrap_seed"] = self.bootstrap_seed
        if self.extra is not None:
            out["pseudo_labelled_images"] = len(self.extra[0])
        return out
