"""The train and eval transforms of training/transforms.py."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.config import DEFAULTS
from training.transforms import eval_transform, train_transform

PREPROCESS = {"resize_size": 40, "crop_size": 32, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}


def test_eval_transform_is_resize_shorter_side_then_center_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = eval_transform(PREPROCESS)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    resized = image.resize((53, 40), Image.Resampling.BILINEAR)  # shorter side 60 -> 40, 80 -> 53
    left, top = round((53 - 32) / 2), round((40 - 32) / 2)  # torchvision's offsets: round half to even
    crop = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
    expected = torch.from_numpy((crop - 0.5) / 0.25).permute(2, 0, 1)
    assert (out - expected).abs().max() < 1e-6  # torchvision resizes PIL images with PIL itself


def test_train_transform_with_every_augmentation():
    augment = {
        **DEFAULTS["augment"],
        "crop": "random_resized",
        "crop_padding": 4,
        "hflip": 0.5,
        "rotation": 15,
        "color_jitter": 0.3,
        "auto_augment": "randaugment",
        "random_erasing": 0.5,
    }
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    plain = eval_transform(PREPROCESS)(image)
    for auto in ("randaugment", "trivialaugment", "none"):
        transform = train_transform(PREPROCESS, {**augment, "auto_augment": auto})
        torch.manual_seed(0)
        draws = [transform(image) for _ in range(3)]
        assert all(out.shape == (3, 32, 32) and torch.isfinite(out).all() for out in draws)
        # the steps are random: each draw is another picture, and none is the eval view
        assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
        assert all((out - plain).abs().max() > 0.1 for out in draws)
        torch.manual_seed(0)
        assert torch.equal(transform(image), draws[0])  # and they come from torch's generator (resume replays them)
