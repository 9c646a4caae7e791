"""Recipe files and --set overrides (training/config.py). Torch-free: .ci/serving-pythons runs it too."""

from __future__ import annotations

import pytest

from core.errors import UserError
from tests.conftest import ROOT
from training.config import DEFAULTS, load_config, parse_overrides, valid_keys

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


def test_unknown_key_lists_the_valid_keys(tmp_path):
    with pytest.raises(UserError, match=r"unknown recipe key 'optim.learning_rate'.*optim\.lr"):
        load_config("configs/digits_resnet18.yaml", ["optim.learning_rate=1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  archh: resnet18\n")
    with pytest.raises(UserError, match="unknown recipe key 'model.archh'; valid keys: seed, device"):
        load_config(recipe)


def test_bad_values_are_named():
    with pytest.raises(UserError, match="schedule.name = 'linear' is not one of"):
        load_config(None, {"schedule.name": "linear"})
    with pytest.raises(UserError, match="--set expects key=value"):
        parse_overrides(["optim.lr"])
    with pytest.raises(UserError, match="recipe file not found"):
        load_config("configs/nope.yaml")
