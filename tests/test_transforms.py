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


# Each augmentation switched on alone, against the pipeline with every augmentation off (`OFF`): it must change
# the picture in the way that augmentation does, so dropping one, or one acting as another, fails here.
OFF = {**DEFAULTS["augment"]}
SMALL = {**PREPROCESS, "resize_size": 32}


def draws(augment: dict, image: Image.Image, n: int = 8) -> list[torch.Tensor]:
    transform = train_transform(SMALL, {**OFF, **augment})
    torch.manual_seed(0)
    return [transform(image) for _ in range(n)]


def random_image(seed: int = 3) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_with_every_augmentation_off_the_picture_is_only_resized_and_normalized():
    image = random_image()
    expected = (torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.25
    assert all((out - expected).abs().max() < 1e-6 for out in draws({}, image))


def test_hflip_mirrors_left_right():
    image = random_image()
    (plain,) = draws({}, image, 1)
    assert all(torch.equal(out, plain.flip(-1)) for out in draws({"hflip": 1.0}, image))


def test_crop_padding_shifts_the_picture_and_fills_the_border():
    image = random_image()
    (plain,) = draws({}, image, 1)
    fill = (0 - 0.5) / 0.25  # padding_mode constant pads with black
    shifts = set()
    for out in draws({"crop_padding": 4, "padding_mode": "constant"}, image):
        found = []
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                padded = torch.nn.functional.pad(plain, (4, 4, 4, 4), value=fill)
                if torch.equal(out, padded[:, 4 + dy : 36 + dy, 4 + dx : 36 + dx]):
                    found.append((dy, dx))
        assert found, "the output is not the picture shifted by at most 4 pixels"
        shifts.update(found)
    assert len(shifts) > 1  # the shift is drawn, not fixed


def test_rotation_turns_the_picture_about_its_centre():
    """A white picture turned by any angle: black corners where the frame turned away, point-symmetric about
    the centre, and a white middle."""
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    turned = 0
    for out in draws({"rotation": 40}, white):
        dark = out[0] < 0
        middle = out[:, 12:20, 12:20]
        assert torch.equal(middle, torch.full_like(middle, 2.0))
        assert (dark ^ dark.flip(0, 1)).sum() <= 4  # point-symmetric up to rounding on the pixel grid
        assert not dark[:, 15:17].any() and not dark[15:17].any()  # the middle row and column stay in the frame
        turned += bool(dark[0, 0] or dark[0, -1])
    assert turned > 0


def test_random_resized_crop_zooms_into_part_of_the_picture():
    """A left-to-right ramp: a crop of it, resized, is still a ramp (rows equal and rising), over a part of the
    range; no flip, rotation or erasing passes that."""
    ramp = np.repeat(np.linspace(0, 255, 32).round().astype(np.uint8)[None, :, None], 32, 0).repeat(3, 2)
    image = Image.fromarray(ramp)
    (plain,) = draws({}, image, 1)
    spans = set()
    for out in draws({"crop": "random_resized", "min_scale": 0.2}, image):
        row = out[0, 0]
        assert torch.equal(out[0], row.expand(32, 32)) and (row.diff() >= -1e-6).all()
        spans.add((round(float(row[0]), 3), round(float(row[-1]), 3)))
    assert len(spans) > 1 and any(span != (float(plain[0, 0, 0]), float(plain[0, 0, -1])) for span in spans)


def test_random_erasing_blanks_one_rectangle():
    image = random_image()
    (plain,) = draws({}, image, 1)
    for out in draws({"random_erasing": 1.0}, image):
        changed = (out != plain).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert len(ys), "nothing was erased"
        box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        assert (out[:, box[0], box[1]] == 0).all()  # erased to 0, the normalized mean
        outside = torch.ones_like(changed)
        outside[box] = False
        assert torch.equal(out[:, outside], plain[:, outside])


def test_color_jitter_changes_tones_not_geometry():
    """On a grey picture brightness and contrast only rescale tones: brighter pixels stay at least as bright
    and grey stays grey."""
    grey = np.random.default_rng(4).integers(0, 255, (32, 32), dtype=np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, 2))
    (plain,) = draws({}, image, 1)
    order = plain[0].flatten().argsort()
    for out in draws({"color_jitter": 0.4}, image):
        assert not torch.equal(out, plain)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        assert (out[0].flatten()[order].diff() >= -1e-6).all()


def test_randaugment_changes_the_picture_and_zero_ops_do_not():
    image = random_image()
    (plain,) = draws({}, image, 1)
    changed = [not torch.equal(out, plain) for out in draws({"auto_augment": "randaugment"}, image)]
    assert sum(changed) >= 6, changed  # an op can be the identity (or a no-op at this magnitude) now and then
    none = draws({"auto_augment": "randaugment", "randaugment_num_ops": 0}, image)
    assert all(torch.equal(out, plain) for out in none)
