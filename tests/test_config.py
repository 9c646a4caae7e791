from __future__ import annotations

import pytest

from training.config import DEFAULTS, load_config, parse_overrides, valid_keys
from training.errors import UserError

RECIPES = ["digits_resnet18", "cifar100_efficientnet_v2_s_reference", "cifar100_efficientnet_v2_s", "cifar100_resnet50"]


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves(name):
    config = load_config(f"configs/{name}.yaml")
    assert valid_keys(config) == valid_keys(DEFAULTS)


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
