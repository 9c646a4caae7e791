"""Recipe files and --set overrides (training/config.py). Torch-free: .ci/serving-pythons runs it too."""

from __future__ import annotations

import pytest

from core.errors import UserError
from core.schema import key_paths
from tests.conftest import PHOTOS_RECIPE, ROOT
from training.config import DEFAULTS, from_scratch, load_config, parse_overrides, save_config, valid_keys
from training.recipe import Recipe

# every recipe in configs/, so that a new one is loaded without being listed here
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def test_the_recipes_the_readme_names_are_all_found():
    assert set(RECIPES) >= {
        "digits_resnet18",
        "digits_10pct",
        "digits_resnet18_progressive",
        "cifar100_efficientnet_v2_s_reference",
        "cifar100_efficientnet_v2_s",
        "cifar100_resnet50",
    }


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves(name):
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert valid_keys(config) == valid_keys(DEFAULTS)


def test_low_label_and_progressive_recipes_say_what_the_readme_says():
    low = load_config(ROOT / "configs" / "digits_10pct.yaml")
    assert (low["data"]["dataset"], low["data"]["root"]) == ("imagefolder", "data/digits-10pct")
    # the transfer set of distillation and self-training (README: "digits_10pct.yaml sets" it)
    assert low["distill"]["unlabeled"] == low["self_train"]["unlabeled"] == "data/digits-10pct/unlabeled"
    assert low["augment"]["auto_augment"] == "randaugment" and low["model"]["dropout"] == 0.2
    progressive = load_config(ROOT / "configs" / "digits_resnet18_progressive.yaml")
    stages = progressive["progressive"]
    assert (stages["stages"], stages["start_size"], progressive["preprocess"]["crop_size"]) == (3, 16, 32)


def test_reference_recipe_is_the_published_one():
    c = load_config("configs/cifar100_efficientnet_v2_s_reference.yaml")
    assert (c["model"]["arch"], c["model"]["pretrained"]) == ("efficientnet_v2_s", "imagenet")
    assert (c["preprocess"]["crop_size"], c["preprocess"]["interpolation"]) == (224, "bilinear")
    assert c["augment"]["padding_mode"] == "reflect" and c["augment"]["cutmix_p"] == 0.5
    assert (c["optim"]["name"], c["optim"]["lr"], c["optim"]["weight_decay"]) == ("adamw", 4e-4, 1e-3)
    assert (c["schedule"]["name"], c["schedule"]["step_size"], c["schedule"]["gamma"]) == ("step", 10, 0.9)
    assert (c["train"]["epochs"], c["data"]["batch_size"]) == (25, 128)


def test_overrides_are_yaml_typed():
    config = load_config(
        "configs/digits_resnet18.yaml",
        [
            "optim.lr=3e-4",
            "model.arch=resnet34",
            "train.amp=bf16",
            "preprocess.mean=[0.5, 0.5, 0.5]",
            "model.dropout=null",
        ],
    )
    assert config["optim"]["lr"] == 3e-4 and config["model"]["arch"] == "resnet34"
    assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5] and config["model"]["dropout"] is None


def test_a_misspelt_key_is_answered_with_the_nearest_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"^unknown recipe key 'optim.lrr': did you mean optim\.lr\?$"):
        load_config("configs/digits_resnet18.yaml", ["optim.lrr=1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  archh: resnet18\n")
    # a mistake in the file names the file; one in --set does not
    with pytest.raises(
        UserError, match=rf"^unknown recipe key 'model.archh': did you mean model\.arch\? \(in {recipe}\)$"
    ):
        load_config(recipe)
    recipe.write_text("optim:\n  lr: -1\n")
    with pytest.raises(UserError, match=rf"^optim.lr must be a number greater than 0, got -1 \(in {recipe}\)$"):
        load_config(recipe)
    assert load_config(recipe, ["optim.lr=0.1"])["optim"]["lr"] == 0.1  # --set mends it
    with pytest.raises(UserError, match=r"^optim.lr must be a number greater than 0, got -2$"):
        load_config(recipe, ["optim.lr=-2"])
    # a key under the wrong section is pointed to the section that has it
    with pytest.raises(UserError, match=r"^unknown recipe key 'train.lr': did you mean optim\.lr\?$"):
        load_config(None, {"train.lr": 0.1})
    # nothing near: the keys of that one section, not all of them
    with pytest.raises(UserError, match=r"^unknown recipe key 'optim.learning_rate'; valid keys in optim: name, lr,"):
        load_config(None, {"optim.learning_rate": 0.1})
    # inside a bag variant, which is checked as the recipe it makes
    with pytest.raises(UserError, match=r"^bag.variants.0: unknown recipe key 'model.arc': did you mean model\.arch"):
        load_config(None, {"bag.variants": [{"model.arc": "resnet34"}]})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule.name": "linear"}, "schedule.name must be cosine, step, onecycle or constant, got 'linear'"),
        ({"optim.lr": -1}, "optim.lr must be a number greater than 0, got -1"),
        ({"optim.lr": "fast"}, "optim.lr must be a number greater than 0, got 'fast'"),
        ({"train.epochs": 1.5}, "train.epochs must be a whole number of at least 1, got 1.5"),
        ({"train.epochs": 0}, "train.epochs must be a whole number of at least 1, got 0"),
        ({"augment.hflip": True}, "augment.hflip must be a number from 0 to 1, got True"),
        ({"optim.betas": [0.9, 2]}, "optim.betas.1 must be a number from 0 to 1, got 2"),
        ({"progressive.batch_sizes": [0, 8]}, "progressive.batch_sizes.0 must be a whole number of at least 1, got 0"),
        ({"self_train.threshold": 1}, "self_train.threshold must be a number of at least 0 and less than 1, got 1"),
        ({"self_train.teacher_labels": ["a", "b"]}, "self_train.teacher_labels lists 2 files for 1 iterations"),
        ({"bag.members": 1}, "bag.members must be a whole number of at least 2, got 1"),
        ({"data.root": 3}, "data.root must be text, got 3"),
        ({"model": "resnet18"}, "model must be a mapping of arch, pretrained, transfer,"),
        ({"optim.lr.x": 1}, "recipe key 'optim.lr.x': optim.lr is a value, not a section"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(UserError) as refused:
        load_config("configs/digits_resnet18.yaml", overrides)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value), str(refused.value)


def test_file_and_override_mistakes():
    with pytest.raises(UserError, match="--set expects key=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(UserError, match="recipe file not found"):
        load_config("configs/nope.yaml")


def test_the_defaults_are_the_recipe_models_and_the_resolved_config_is_plain_yaml(tmp_path):
    """config.yaml holds plain YAML types (checkpoints and export read it back with safe loaders)."""
    assert valid_keys(DEFAULTS) == key_paths(Recipe)  # every key of the models is written, sections opened
    config = load_config("configs/digits_resnet18.yaml", ["optim.lr=1", "augment.rotation=15"])
    assert config["optim"]["lr"] == 1.0 and isinstance(config["augment"]["rotation"], float)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config  # --resume reads it back as a recipe


def test_from_scratch_a_slower_body_learns_at_the_heads_rate():
    """A body learning-rate multiplier below 1 serves pretrained weights only: from scratch fit sets it to 1 and
    says so in one line (EfficientNetV2-S on the photos stayed at chance with 0.1)."""
    config = load_config(PHOTOS_RECIPE, {"model.pretrained": "none"})
    assert config["model"]["backbone_lr_mult"] == 0.1  # the file's value, until fit starts
    changed, lines = from_scratch(config)
    assert changed["model"]["backbone_lr_mult"] == 1.0 and config["model"]["backbone_lr_mult"] == 0.1
    assert lines == [
        "model.backbone_lr_mult 0.1 slows a pretrained body; with model.pretrained=none the body starts random and "
        "learns at the head's rate: set to 1.0"
    ]
    # pretrained weights (a download or a file) keep the recipe's multiplier
    for pretrained in ("imagenet", "/weights/resnet18-f37072fd.pth"):
        config = load_config(PHOTOS_RECIPE, {"model.pretrained": pretrained})
        assert from_scratch(config) == (config, [])
    # every shipped recipe, made from scratch, trains its body at the head's rate
    for recipe in sorted((ROOT / "configs").glob("*.yaml")):
        config, _ = from_scratch(load_config(recipe, {"model.pretrained": "none"}))
        assert config["model"]["backbone_lr_mult"] == 1.0, recipe
