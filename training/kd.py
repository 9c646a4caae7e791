"""Knowledge distillation (Hinton et al. 2015) from one or several teacher checkpoints.

    python -m training distill --teacher runs/big/best.pt [--teacher ...] --config STUDENT.yaml --out runs/NAME

Loss per image: alpha * CE(student, label) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T), where
p^T = softmax(logits / T) and the teacher distribution is the mean over teachers (an ensemble
teacher). Unlabelled images (`--unlabeled DIR`, a transfer set) use alpha = 0. Each teacher sees the
student's augmented image at its own size and normalization (`SharedViews`); without random
augmentation its outputs never change, so they are computed once and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from core.errors import UserError
from training import checkpoint as ckpt
from training.data import Splits, Transformed
from training.models import model_from_checkpoint
from training.tasks import Task
from training.transforms import SharedViews, is_random
from training.unlabeled import find_images, unlabeled_images


def kd_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """Batch mean of the per-image loss above; `teacher_probs` are at temperature T; label -1 = unlabelled."""
    t = temperature
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = teacher_probs.float()
    kl = (torch.special.xlogy(teacher, teacher) - teacher * log_student).sum(1)
    labelled = labels >= 0
    ce = F.cross_entropy(student_logits.float(), labels.clamp(min=0), reduction="none")
    weight = torch.where(labelled, torch.full_like(ce, alpha), torch.zeros_like(ce))
    return (weight * ce + (1 - weight) * t * t * kl).mean()


class Teachers:
    """Teacher checkpoints in eval mode on `device`; `probabilities` averages their tempered softmax."""

    def __init__(self, paths: Sequence[str | Path], labels: list[str], device: torch.device):
        if not paths:
            raise UserError("distill needs at least one --teacher checkpoint")
        self.models, self.preprocesses = [], []
        for path in paths:
            checkpoint = ckpt.load(path)
            if checkpoint["labels"] != labels:
                raise UserError(
                    f"teacher {path} was trained on {checkpoint['num_classes']} classes {checkpoint['labels'][:10]}, "
                    f"the student's data has {len(labels)} classes {labels[:10]}"
                )
            model = model_from_checkpoint(checkpoint).to(device).requires_grad_(False)
            self.models.append(model)
            self.preprocesses.append(checkpoint["preprocess"])

    @torch.no_grad()
    def probabilities(self, views: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
        probs = [(m(v).float() / temperature).softmax(1) for m, v in zip(self.models, views)]
        return torch.stack(probs).mean(0)


class _Views(Dataset):
    """(PIL image, label) -> ((student view, teacher views...), label, index); index keys the teacher cache."""

    def __init__(self, dataset: Dataset, views: SharedViews):
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], int, int]:
        image, label = self.dataset[i]
        return self.views(image), label, i


class DistillationObjective:
    """The objective: student logits against the (cached) ensemble-teacher distribution and the labels."""

    def __init__(self, teachers: Teachers, alpha: float, temperature: float, cache: torch.Tensor | None):
        self.teachers, self.alpha, self.temperature, self.cache = teachers, alpha, temperature, cache

    def __call__(self, model: nn.Module, batch, device: torch.device, memory_format) -> tuple:
        views, labels, index = batch
        labels = labels.to(device, non_blocking=True)
        cached = self.cache is not None and not torch.isnan(self.cache[index, 0]).any()
        if cached:
            probs = self.cache[index].to(device)
        else:
            teacher_views = [v.to(device, non_blocking=True) for v in views[1:]]
            probs = self.teachers.probabilities(teacher_views, self.temperature)
            if self.cache is not None:
                self.cache[index] = probs.float().cpu()
        logits = model(views[0].to(device, non_blocking=True, memory_format=memory_format))
        loss = kd_loss(logits, probs, labels, self.alpha, self.temperature)
        # accuracy: against the label where there is one, else agreement with the teacher
        return loss, logits, torch.where(labels >= 0, labels, probs.argmax(1))


class DistillationTask(Task):
    """Train the student on what the teachers say about each image (and on the labels, by `alpha`)."""

    def __init__(self, distill: dict[str, Any]):
        self.cfg = distill
        self.teachers: Teachers | None = None
        self.unlabeled: list[Path] = []
        self.cache: torch.Tensor | None = None

    def prepare(self, splits: Splits, device: torch.device) -> None:
        self.teachers = Teachers(self.cfg["teachers"], splits.labels, device)
        if self.cfg["unlabeled"]:
            self.unlabeled = find_images(self.cfg["unlabeled"])

    def train_set(self, splits: Splits, preprocess: dict[str, Any], augment: dict[str, Any]) -> Dataset:
        if augment["cutmix_p"] or augment["mixup_p"]:
            raise UserError("distillation matches the teacher image by image; set augment.cutmix_p and mixup_p to 0")
        base, indices = splits.parts["train"].base, splits.parts["train"].indices
        items: Dataset = Transformed(base, indices, None)
        if self.unlabeled:
            items = ConcatDataset([items, unlabeled_images(self.unlabeled)])
        if not is_random(augment) and self.cache is None:
            self.cache = torch.full((len(items), len(splits.labels)), float("nan"))
        return _Views(items, SharedViews([preprocess, *self.teachers.preprocesses], augment))

    def objective(self, criterion: nn.Module, augment: dict[str, Any], num_classes: int) -> Callable:
        cache = self.cache if not is_random(augment) else None
        return DistillationObjective(self.teachers, self.cfg["alpha"], self.cfg["temperature"], cache)

    def record(self) -> dict[str, Any]:
        return {
            "teachers": [str(p) for p in self.cfg["teachers"]],
            "alpha": self.cfg["alpha"],
            "temperature": self.cfg["temperature"],
            "unlabeled_images": len(self.unlabeled),
        }
