"""bag.variants: the per-member recipe overrides of `python -m training bag` (no training needed)."""

from __future__ import annotations

from training.bag import member_config
from training.config import load_config


def test_bag_variants_are_used_in_turn_and_each_member_gets_its_own_seed():
    config = load_config(
        None,
        {"seed": 5, "bag.members": 3, "bag.variants": [{"model.arch": "resnet34", "optim.lr": 0.01}, {}]},
    )
    members = [member_config(config, i) for i in range(3)]
    assert [m["model"]["arch"] for m in members] == ["resnet34", config["model"]["arch"], "resnet34"]
    assert [m["optim"]["lr"] for m in members] == [0.01, config["optim"]["lr"], 0.01]
    assert [m["seed"] for m in members] == [5, 6, 7]
    assert config["model"]["arch"] != "resnet34"  # the recipe itself is left as it was
