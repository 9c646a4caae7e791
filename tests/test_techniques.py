"""Units of distillation, pseudo-labelling, progressive stages and the schedules they need."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from training.config import DEFAULTS, load_config
from training.digits import write_digits
from training.kd import Teachers, kd_loss
from training.optim import lr_factor
from training.progressive import DropoutSchedule, plan_stages
from training.transforms import SharedViews, eval_transform
from training.unlabeled import as_targets, find_images, read_labels, select, write_labels


def test_kd_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(4, 3) * 2, torch.randn(4, 3) * 2
    labels = torch.tensor([0, 2, -1, 1])  # the third image is unlabelled
    alpha, t = 0.3, 2.5
    teacher = (teacher_logits / t).softmax(1)
    expected = 0.0
    for i in range(4):
        z = student[i].tolist()
        soft = [math.exp(v / t) for v in z]
        log_q = [math.log(v / sum(soft)) for v in soft]
        p = teacher[i].tolist()
        kl = sum(pk * (math.log(pk) - lq) for pk, lq in zip(p, log_q))
        ce = -(z[labels[i]] - math.log(sum(math.exp(v) for v in z))) if labels[i] >= 0 else 0.0
        a = alpha if labels[i] >= 0 else 0.0
        expected += a * ce + (1 - a) * t * t * kl
    assert float(kd_loss(student, teacher, labels, alpha, t)) == pytest.approx(expected / 4, rel=1e-5)
    # alpha = 1 on labelled images is plain cross-entropy; a student equal to its teacher has zero KL
    assert float(kd_loss(student[:2], teacher[:2], labels[:2], 1.0, t)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(student[:2], labels[:2])), rel=1e-6
    )
    assert float(kd_loss(teacher_logits, teacher, torch.full((4,), -1), 0.5, t)) == pytest.approx(0.0, abs=1e-6)


def _checkpoint(tmp_path, name: str, seed: int, labels: list[str], crop: int = 32) -> str:
    """A real (random-weight) checkpoint written the way `fit` writes one."""
    from training import checkpoint as ckpt
    from training.checkpoint import checkpoint_dict
    from training.models import build_model

    torch.manual_seed(seed)
    config = load_config(None, {"model.arch": "resnet18", "preprocess.crop_size": crop, "preprocess.resize_size": crop})
    model, preprocess, _ = build_model(config["model"], len(labels), config["preprocess"])
    path = tmp_path / f"{name}.pt"
    ckpt.save(checkpoint_dict(model, None, labels, preprocess, config, {}), path)
    return str(path)


def test_teachers_average_their_tempered_probabilities_and_refuse_other_labels(tmp_path):
    labels = [str(i) for i in range(4)]
    paths = [_checkpoint(tmp_path, "a", 0, labels), _checkpoint(tmp_path, "b", 1, labels, crop=48)]
    teachers = Teachers(paths, labels, torch.device("cpu"))
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 48, 48)]
    got = teachers.probabilities(views, 3.0)
    with torch.no_grad():
        each = [(m(v) / 3.0).softmax(1) for m, v in zip(teachers.models, views)]
    torch.testing.assert_close(got, (each[0] + each[1]) / 2)
    with pytest.raises(UserError, match="trained on 4 classes"):
        Teachers(paths[:1], ["a", "b", "c", "d"], torch.device("cpu"))


def test_each_model_sees_the_image_under_its_own_preprocessing():
    student = {"resize_size": 32, "crop_size": 32, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    teacher = {
        "resize_size": 72, "crop_size": 64, "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    plain = SharedViews([student, teacher], DEFAULTS["augment"])(image)
    torch.testing.assert_close(plain[1], eval_transform(teacher)(image))  # no augmentation: the teacher's eval view
    assert plain[0].shape == (3, 32, 32)
    augment = {**DEFAULTS["augment"], "crop": "random_resized", "hflip": 1.0}
    torch.manual_seed(0)
    s, t = SharedViews([student, teacher], augment)(image)
    assert s.shape == (3, 32, 32) and t.shape == (3, 64, 64)
    # the same augmented picture: undo each normalization, shrink the teacher's view, compare
    s_pixels = s * 0.5 + 0.5
    t_pixels = t * torch.tensor(teacher["std"])[:, None, None] + torch.tensor(teacher["mean"])[:, None, None]
    shrunk = torch.nn.functional.interpolate(t_pixels[None], size=32, mode="bilinear", antialias=True)[0]
    assert (shrunk - s_pixels).abs().mean() < 0.02


def test_pseudo_label_selection_threshold_and_balance(tmp_path):
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    assert select(probs, 0.58).tolist() == [0, 1, 3]
    # class 0 has 3 confident images, class 1 has 1: K = 2, so class 0 keeps its best two, class 1 repeats
    assert sorted(select(probs, 0.0, balance=True).tolist()) == [0, 1, 3, 3]
    with pytest.raises(UserError, match="no image reaches the pseudo-label threshold 0.95"):
        select(probs, 0.95)
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    write_labels(tmp_path / "labels.csv", paths, probs, ["cat", "dog"])
    read_paths, soft = read_labels(tmp_path / "labels.csv", ["cat", "dog"])
    assert read_paths == paths and np.allclose(soft, probs)
    assert as_targets(probs, soft=False).tolist() == [[1, 0], [1, 0], [1, 0], [0, 1]]
    with pytest.raises(UserError, match="no pseudo-labels for the classes"):
        read_labels(tmp_path / "labels.csv", ["cat", "bird"])


def test_unlabelled_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images in"):
        find_images(tmp_path / "empty")


def test_digits_with_a_label_fraction(tmp_path):
    root = write_digits(tmp_path / "d10", label_fraction=0.1)
    train = list((root / "train").rglob("*.png"))
    unlabeled = list((root / "unlabeled").glob("*.png"))
    assert len(train) == 126 and len(unlabeled) == 1132 and len(list((root / "test").rglob("*.png"))) == 359
    assert {p.parent.name for p in train} == {str(i) for i in range(10)}  # every class keeps labels
    assert not {p.name for p in train} & {p.name for p in unlabeled}


def test_progressive_stages_interpolate_size_and_regularization():
    config = load_config(
        None,
        {
            "train.epochs": 10, "data.batch_size": 64, "augment.mixup_p": 0.5, "augment.mixup_alpha": 0.4,
            "augment.randaugment_magnitude": 9, "progressive.stages": 3, "progressive.start_size": 16,
            "progressive.start_mixup_alpha": 0.0, "progressive.start_randaugment_magnitude": 3,
            "progressive.batch_sizes": [256, 128, 64],
        },
    )  # fmt: skip
    stages = plan_stages(config, 32)
    assert [(s.first_epoch, s.last_epoch) for s in stages] == [(1, 3), (4, 7), (8, 10)]
    assert [s.size for s in stages] == [16, 24, 32] and [s.batch_size for s in stages] == [256, 128, 64]
    assert [s.augment["randaugment_magnitude"] for s in stages] == [3, 6, 9]
    assert [s.augment["mixup_alpha"] for s in stages] == pytest.approx([0.0, 0.2, 0.4])
    assert stages[0].augment["mixup_p"] == 0.0 and stages[1].augment["mixup_p"] == 0.5  # alpha 0: no MixUp
    assert len(plan_stages(load_config(None, {"train.epochs": 10}), 32)) == 1
    with pytest.raises(UserError, match="at least as many epochs"):
        plan_stages(load_config(None, {"train.epochs": 2, "progressive.stages": 3}), 32)
    with pytest.raises(UserError, match="one per stage"):
        plan_stages(load_config(None, {"progressive.stages": 2, "progressive.batch_sizes": [64]}), 32)

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3))
    schedule = DropoutSchedule(model, 0.1)
    schedule.apply(stages[1])
    assert model[1].p == pytest.approx(0.2)
    with pytest.raises(UserError, match="has no dropout"):
        DropoutSchedule(torch.nn.Linear(2, 2), 0.1)


def test_schedule_over_epochs_of_different_lengths():
    cosine = {**DEFAULTS["schedule"], "name": "cosine", "warmup_epochs": 0}
    # epochs of 10, 10, 5, 5 steps (a progressive run whose batch size doubles): half-way is step 20
    steps = [10, 10, 5, 5]
    assert lr_factor(20, steps, 4, cosine) == pytest.approx(0.5)
    assert lr_factor(5, steps, 4, cosine) == pytest.approx(lr_factor(5, 10, 4, cosine))
    assert lr_factor(30, steps, 4, cosine) == pytest.approx(0.0, abs=1e-12)


class CountingTeachers:
    """Stands in for the teacher models only (the cache in DistillationObjective is what is under test): fixed
    probabilities per image value, and a count of the images the teachers were asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def probabilities(self, views, temperature: float) -> torch.Tensor:
        self.asked += len(views[0])
        values = views[0][:, 0, 0, 0]
        return torch.stack([values, 1 - values], 1)


def test_teacher_outputs_are_computed_once_and_cached_without_random_augmentation():
    from training.kd import DistillationObjective, DistillationTask

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 2))
    images = torch.tensor([0.2, 0.7, 0.9]).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    batch = ((images, images), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    for cache, asked in ((torch.full((3, 2), float("nan")), 3), (None, 9)):
        teachers = CountingTeachers()
        objective = DistillationObjective(teachers, 0.5, 1.0, cache)
        losses = [objective(student, batch, torch.device("cpu"), torch.preserve_format)[0] for _ in range(3)]
        assert teachers.asked == asked  # cached: each image once over three epochs; not cached: every time
        assert all(torch.equal(loss, losses[0]) for loss in losses)  # the cached answer is the teachers' answer
    # the task keeps a cache only where the teachers' view of an image never changes
    task = DistillationTask({**DEFAULTS["distill"]})
    task.cache = torch.zeros(3, 2)
    task.teachers = CountingTeachers()
    assert task.objective(None, DEFAULTS["augment"], 2).cache is task.cache
    assert task.objective(None, {**DEFAULTS["augment"], "hflip": 0.5}, 2).cache is None
