"""Recipe defaults, YAML loading and `--set key=value` overrides.

A recipe file only names what differs from DEFAULTS; the resolved config (defaults + recipe +
overrides) is written beside the run as `config.yaml`, so a run can be reproduced from its folder.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "deterministic": False,  # deterministic kernels and seeded everything (slower on GPU)
    "data": {
        "dataset": "digits",  # digits | photos | cifar10 | cifar100 | imagefolder
        "root": "data/digits",
        "download": False,  # cifar only: allow torchvision to download into root
        "val_fraction": 0.1,  # held out from train when the dataset has no val split
        "limit": 0,  # keep at most this many images per split (0 = all); for smoke runs
        "on_bad_image": "error",  # error | skip: what to do with a file that does not decode
        # a val/test split lacking some of train's classes is refused: its accuracy says nothing about them.
        # true accepts it (a rare class with no held-out images in a small folder of photos)
        "allow_missing_classes": False,
        "batch_size": 64,  # global batch: divided across DDP processes
        "eval_batch_size": 256,
        "workers": 2,
    },
    "model": {
        "arch": "resnet18",  # any torchvision classification model name
        "pretrained": "none",  # imagenet | none | <weights enum name> | <path to .pth / checkpoint>
        "transfer": "full",  # full | linear_probe
        "backbone_lr_mult": 1.0,  # lr of the pretrained body relative to the new head
        "dropout": None,  # classifier dropout; None keeps the architecture's default
        "stochastic_depth_prob": None,  # EfficientNet / ConvNeXt / Swin; None keeps the default
    },
    # Overrides of the preprocessing that comes with the weights; None keeps the weights' value.
    "preprocess": {
        "resize_size": None,
        "crop_size": None,
        "interpolation": None,  # nearest | bilinear | bicubic
        "mean": None,
        "std": None,
    },
    "augment": {
        "crop": "resize",  # resize: resize + center crop | random_resized: RandomResizedCrop
        "min_scale": 0.08,  # random_resized only
        "crop_padding": 0,  # RandomCrop padding (pixels at the final size) after the resize
        "padding_mode": "reflect",  # reflect avoids black borders the eval images never have
        "hflip": 0.0,
        "rotation": 0.0,  # degrees
        "color_jitter": 0.0,
        "auto_augment": "none",  # none | randaugment | trivialaugment
        "randaugment_num_ops": 2,
        "randaugment_magnitude": 9,
        "random_erasing": 0.0,
        "cutmix_p": 0.0,
        "cutmix_alpha": 1.0,
        "mixup_p": 0.0,
        "mixup_alpha": 0.2,
    },
    "optim": {
        "name": "adamw",  # adamw | sgd
        "lr": 1e-3,
        "weight_decay": 0.05,  # never applied to norm layers and biases
        "momentum": 0.9,  # sgd
        "nesterov": True,  # sgd
        "betas": [0.9, 0.999],  # adamw
        "label_smoothing": 0.0,
        "clip_grad_norm": 0.0,  # 0 = off
    },
    "schedule": {
        "name": "cosine",  # cosine | step | onecycle | constant
        "warmup_epochs": 0.0,
        "warmup_start_factor": 0.01,
        "step_size": 10,  # step: epochs between decays
        "gamma": 0.1,  # step: decay factor
        "min_lr_factor": 0.0,  # cosine: final lr as a fraction of lr
    },
    "train": {
        "epochs": 30,
        "amp": "none",  # none | bf16 | fp16 (fp16 needs CUDA)
        "channels_last": False,
        "compile": False,
        "sync_bn": False,  # DDP on CUDA: BatchNorm statistics over the global batch, not each GPU's share
        "ema_decay": 0.0,  # 0 = no EMA; e.g. 0.999 keeps an exponential moving average of weights
        "log_every": 10,
    },
    # EfficientNetV2's progressive learning: train in stages whose image size and regularization grow
    # linearly from the start_* values to the recipe's own (final) values; eval stays at the final size.
    "progressive": {
        "stages": 0,  # 0 = off; else this many stages of equal length
        "start_size": 0,  # train crop size of the first stage (the last stage uses preprocess.crop_size)
        "start_randaugment_magnitude": None,  # None = the recipe's value in every stage
        "start_mixup_alpha": None,  # a stage whose alpha is 0 does no MixUp
        "start_cutmix_alpha": None,
        "start_dropout": None,  # scales every Dropout module of the model from this p to its built p
        "batch_sizes": [],  # optional global batch size per stage (small images fit larger batches)
    },
    # `python -m training distill`: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
    "distill": {
        "teachers": [],  # checkpoint paths (the CLI's --teacher); their probabilities are averaged
        "alpha": 0.5,  # weight of the hard-label loss on labelled images; unlabelled images use 0
        "temperature": 4.0,
        "unlabeled": "",  # folder of unlabelled images added as a transfer set (the CLI's --unlabeled)
    },
    # `python -m training self-train` (Noisy Student); the recipe's augment/dropout settings are the noise
    "self_train": {
        "iterations": 1,
        "unlabeled": "",  # folder of unlabelled images (the CLI's --unlabeled)
        "soft": True,  # soft pseudo-labels (teacher probabilities) or hard ones (one-hot argmax)
        "threshold": 0.0,  # keep images whose top teacher probability is at least this
        "balance": False,  # same number of pseudo-labelled images per class (top-confidence / repeats)
        "student_archs": [],  # arch of the student of each iteration; empty = the recipe's arch throughout
        # the teacher's labels of iteration 1, 2, ... from files (service.predict --probabilities, e.g. --ray)
        # instead of labelling in this process; iterations past the list label here
        "teacher_labels": [],
    },
    # `python -m training bag`: members differ by seed, and optionally by resample and recipe overrides
    "bag": {
        "members": 3,
        "bootstrap": False,  # each member trains on a resample with replacement of the train split
        "variants": [],  # per-member --set overrides used in turn, e.g. [{model.arch: resnet34}, {}]
    },
}


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `4e-4` as a string (it wants `4.0e-4`); recipes are full of such learning rates."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN)$"
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "data.dataset": ("digits", "photos", "cifar10", "cifar100", "imagefolder"),
    "data.on_bad_image": ("error", "skip"),
    "model.transfer": ("full", "linear_probe"),
    "preprocess.interpolation": ("nearest", "bilinear", "bicubic"),
    "augment.crop": ("resize", "random_resized"),
    "augment.padding_mode": ("constant", "edge", "reflect", "symmetric"),
    "augment.auto_augment": ("none", "randaugment", "trivialaugment"),
    "optim.name": ("adamw", "sgd"),
    "schedule.name": ("cosine", "step", "onecycle", "constant"),
    "train.amp": ("none", "bf16", "fp16"),
}


def valid_keys(tree: dict[str, Any] = DEFAULTS, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += valid_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _unknown_key(key: str) -> UserError:
    return UserError(f"unknown recipe key '{key}'; valid keys: {', '.join(valid_keys())}")


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise _unknown_key(name)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"recipe key '{name}' is a section; give it a mapping, not {value!r}")
            _merge(base[key], value, f"{name}.")
        else:
            base[key] = value


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise _unknown_key(dotted)
        node = node[part]
    if leaf not in node or isinstance(node[leaf], dict):
        raise _unknown_key(dotted)
    node[leaf] = value


def get_key(config: dict[str, Any], dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "model.arch=resnet50"]` -> {dotted key: YAML-parsed value}."""
    parsed = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got '{pair}'")
        parsed[key.strip()] = _yaml(raw) if raw.strip() else None
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> dict:
    """Defaults, then the recipe at `path`, then `overrides`; validated."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"recipe file not found: {path}")
        try:
            recipe = _yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(recipe, dict):
            raise UserError(f"recipe {path} must be a mapping of sections")
        _merge(config, recipe)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    validate(config)
    return config


def _check_types(config: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> None:
    """A value must have its default's type (ints may stand for floats); None defaults take anything."""
    for key, default in defaults.items():
        value, name = config[key], f"{prefix}{key}"
        if isinstance(default, dict):
            _check_types(value, default, f"{name}.")
        elif default is None or value is None and name.startswith("preprocess."):
            continue
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{name} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{name} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise UserError(f"{name} must be a whole number, got {value!r}")
        elif not isinstance(value, type(default)):
            raise UserError(f"{name} must be a {type(default).__name__}, got {value!r}")


def validate(config: dict[str, Any]) -> None:
    _check_types(config, DEFAULTS)
    for key, allowed in CHOICES.items():
        value = get_key(config, key)
        if value is None and key.startswith("preprocess."):
            continue
        if value not in allowed:
            raise UserError(f"{key} = {value!r} is not one of: {', '.join(allowed)}")
    if config["train"]["epochs"] < 1:
        raise UserError("train.epochs must be at least 1")
    if config["data"]["batch_size"] < 1:
        raise UserError("data.batch_size must be at least 1")
    distill = config["distill"]
    if not 0.0 <= distill["alpha"] <= 1.0:
        raise UserError(f"distill.alpha must be between 0 and 1, got {distill['alpha']}")
    if distill["temperature"] <= 0:
        raise UserError(f"distill.temperature must be positive, got {distill['temperature']}")
    if not 0.0 <= config["self_train"]["threshold"] < 1.0:
        raise UserError(f"self_train.threshold must be in [0, 1), got {config['self_train']['threshold']}")
    if config["self_train"]["iterations"] < 1:
        raise UserError("self_train.iterations must be at least 1")
    if len(config["self_train"]["teacher_labels"]) > config["self_train"]["iterations"]:
        raise UserError(f"self_train.teacher_labels lists {len(config['self_train']['teacher_labels'])} files for "
                        f"{config['self_train']['iterations']} iterations")  # fmt: skip
    if config["bag"]["members"] < 2:
        raise UserError("bag.members must be at least 2 (an ensemble of one is the plain recipe)")
    for variant in config["bag"]["variants"]:
        if not isinstance(variant, dict):
            raise UserError(f"each bag.variants entry is a mapping of recipe keys, got {variant!r}")
        trial = copy.deepcopy(config)
        for key, value in variant.items():
            set_key(trial, key, value)
        trial["bag"]["variants"] = []
        validate(trial)


def save_config(config: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
