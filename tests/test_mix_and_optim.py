from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from core.errors import UserError
from training.config import DEFAULTS
from training.engine import recompute_batchnorm
from training.mix import BatchMixer, cutmix, mixup
from training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_cutmix_and_mixup_targets_sum_to_one_and_match_the_pixels():
    torch.manual_seed(0)
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    onehot = torch.nn.functional.one_hot(torch.arange(8), 10).float()
    for _ in range(20):
        mixed, targets = cutmix(images, onehot, alpha=1.0)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        # the share of pixels from the rolled-in image equals its target weight
        own = (mixed[:, 0] == images[:, 0]).float().mean((1, 2))
        assert torch.allclose(targets[torch.arange(8), torch.arange(8)], own, atol=1e-6)
        mixed, targets = mixup(images, onehot, alpha=0.2)
        assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets >= 0).all()


def drawn(images: torch.Tensor, mixed: torch.Tensor) -> str:
    """Which mix made `mixed` from images whose pixels are each image's index: CutMix copies whole pixels
    of the rolled image (values stay whole indices), MixUp blends them (fractions), nothing leaves them."""
    if torch.equal(mixed, images):
        return "none"
    return "cutmix" if torch.equal(mixed, mixed.round()) else "mixup"


def test_mixer_draws_each_mix_with_its_probability():
    """4,000 batches with a fixed seed: each mix's share within 5 standard errors of its probability.

    The bound is about 0.03, and a correct mixer stays inside it for nearly any seed (two-sided p < 1e-6);
    a mixer that drew MixUp with mixup_p only among the batches CutMix left (0.14 instead of 0.2), or
    swapped the two, would be outside it. At 64 px a CutMix box is empty (looks like "none") only when
    lambda > 1 - 1/1024, a bias of 0.0003.
    """
    p = {"cutmix": 0.3, "mixup": 0.2, "none": 0.5}
    mixer = BatchMixer({**DEFAULTS["augment"], "cutmix_p": p["cutmix"], "mixup_p": p["mixup"]}, 10)
    torch.manual_seed(0)
    images = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 64, 64).contiguous()
    labels = torch.arange(2)
    n, counts = 4000, Counter()
    for _ in range(n):
        mixed, targets = mixer(images, labels)
        assert torch.allclose(targets.sum(1), torch.ones(2))
        counts[drawn(images, mixed)] += 1
    for mix, prob in p.items():
        assert abs(counts[mix] / n - prob) <= 5 * math.sqrt(prob * (1 - prob) / n), counts

    off = BatchMixer(DEFAULTS["augment"], 10)
    assert not off.active
    _, targets = off(torch.randn(8, 3, 8, 8), torch.arange(8))
    assert torch.equal(targets, torch.nn.functional.one_hot(torch.arange(8), 10).float())
    with pytest.raises(UserError, match="must not exceed 1"):
        BatchMixer({**DEFAULTS["augment"], "cutmix_p": 0.5, "mixup_p": 0.7}, 10)


def test_no_weight_decay_on_norms_and_biases_and_a_slower_body():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    optim = {**DEFAULTS["optim"], "lr": 1e-2, "weight_decay": 0.1}
    groups = param_groups(model, "3", optim, backbone_lr_mult=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model[0].weight)]["weight_decay"] == 0.1 and by_id[id(model[0].weight)]["lr"] == 1e-3
    assert by_id[id(model[0].bias)]["weight_decay"] == 0.0
    assert by_id[id(model[1].weight)]["weight_decay"] == 0.0
    assert by_id[id(model[3].weight)]["lr"] == 1e-2 and by_id[id(model[3].bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert isinstance(build_optimizer(groups, {**optim, "name": "sgd"}), torch.optim.SGD)


def test_schedules():
    step = {**DEFAULTS["schedule"], "name": "step", "step_size": 10, "gamma": 0.9}
    assert lr_factor(0, 100, 25, step) == 1.0
    assert lr_factor(999, 100, 25, step) == 1.0 and lr_factor(1000, 100, 25, step) == pytest.approx(0.9)
    assert lr_factor(2000, 100, 25, step) == pytest.approx(0.81)
    cosine = {**DEFAULTS["schedule"], "name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1}
    assert lr_factor(0, 100, 10, cosine) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, cosine) == pytest.approx(0.55)
    assert lr_factor(100, 100, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(550, 100, 10, cosine) == pytest.approx(0.5)
    assert lr_factor(1000, 100, 10, cosine) == pytest.approx(0.0, abs=1e-12)

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, 10, 3, {**DEFAULTS["schedule"], "name": "onecycle", "warmup_epochs": 1})
    lrs = []
    for _ in range(30):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert (
        max(lrs) == pytest.approx(1.0, rel=0.05) and lrs[-1] < 0.01 and math.isclose(lrs.index(max(lrs)), 9, abs_tol=1)
    )


def test_each_batch_mix_alone_acts_as_it_should_and_off_leaves_the_batch():
    """Image i's pixels are all i: MixUp must be one blend lam * x + (1 - lam) * x rolled by one, its targets
    weighted by the same lam; CutMix one box of the rolled image, its targets by the box's area; neither on:
    the batch and one-hot targets unchanged."""
    torch.manual_seed(0)
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    labels = torch.arange(8)
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    mixes = {name: {**DEFAULTS["augment"], f"{name}_p": 1.0} for name in ("cutmix", "mixup")}
    for _ in range(10):
        mixed, targets = BatchMixer(mixes["mixup"], 10)(images, labels)
        lam = float(mixed[1, 0, 0, 0])  # image 1 blends 1 with image 0
        assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
        assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0), atol=1e-6)

        mixed, targets = BatchMixer(mixes["cutmix"], 10)(images, labels)
        pasted = mixed != images
        rows, cols = pasted[1, 0].any(1), pasted[1, 0].any(0)
        box = rows[:, None] & cols[None, :]
        assert torch.equal(pasted, box.expand_as(pasted)), "not one box, the same in every image and channel"
        assert torch.equal(mixed[:, :, box], images.roll(1, 0)[:, :, box])
        kept = 1 - float(box.float().mean())
        assert torch.allclose(targets, kept * onehot + (1 - kept) * onehot.roll(1, 0), atol=1e-6)

        mixed, targets = BatchMixer(DEFAULTS["augment"], 10)(images, labels)
        assert torch.equal(mixed, images) and torch.equal(targets, onehot)


def test_gradient_clipping_bounds_each_step_and_off_does_not():
    """One real training step (train_one_epoch) with SGD at lr 1 and no momentum: the weights move by exactly the
    gradient, so with optim.clip_grad_norm the step's norm is the bound, and without it the raw gradient's."""
    from training.engine import CrossEntropyObjective, TrainState, train_one_epoch

    def step_norm(clip: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        state = TrainState(
            optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
            torch.amp.GradScaler("cpu", enabled=False),
            CrossEntropyObjective(nn.CrossEntropyLoss(), BatchMixer(DEFAULTS["augment"], 3)), None,
            torch.device("cpu"), {"channels_last": False, "amp": "none", "log_every": 1}, clip, model.train,
        )  # fmt: skip
        batch = (torch.randn(8, 4) * 100, torch.randint(0, 3, (8,)))  # large inputs: a gradient far over the bound
        train_one_epoch(model, [batch], state, 1, show=False)
        return float(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm())

    assert step_norm(0.0) > 5.0
    assert step_norm(0.5) == pytest.approx(0.5, rel=1e-3)


def test_recomputed_batchnorm_statistics_are_the_average_over_the_batches_and_leave_the_rng_alone():
    """Precise BN: the running statistics a few steps of training left behind are replaced by the plain average
    over the first batches of the loader; momentum, train/eval mode and the global RNG are as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    norm = model[1]
    norm.running_mean.fill_(5.0)
    norm.running_var.fill_(9.0)
    batches = [(torch.randn(4, 3, 8, 8) * (i + 1) + i, torch.zeros(4)) for i in range(3)]
    model.train()
    rng = torch.get_rng_state()
    recompute_batchnorm(model, batches, torch.device("cpu"), batches=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert norm.momentum == 0.1 and model.training and norm.num_batches_tracked == 2
    with torch.no_grad():
        features = [model[0](images) for images, _ in batches[:2]]
    means = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.var((0, 2, 3)) for f in features]).mean(0)  # unbiased, as BatchNorm keeps it
    torch.testing.assert_close(norm.running_mean, means)
    torch.testing.assert_close(norm.running_var, variances)
