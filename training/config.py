"""Recipe loading, `--set key=value` overrides and the resolved config a run writes.

A recipe file only names what differs from the defaults in training/recipe.py; the resolved config
(defaults + recipe + overrides) is written beside the run as `config.yaml`, so a run can be reproduced
from its own folder. Downstream code reads the resolved config as plain nested dicts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import UserError
from core.schema import MAX_BYTES, Bounded, Refused, cut, error_lines, load_yaml
from training.recipe import Recipe

# the resolved config of a recipe that names nothing: what tests and benchmarks build their sections from
DEFAULTS: dict[str, Any] = Recipe().model_dump()


class _RecipeLoader(Bounded, yaml.SafeLoader):
    """YAML 1.1 reads `4e-4` as a string (it wants `4.0e-4`); recipes are full of such learning rates. Bounded as
    serving.yaml is (core/schema.py): aliases, values and nesting past their bounds are refused."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN)$"
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return load_yaml(text, _RecipeLoader)


def valid_keys(tree: dict[str, Any] = DEFAULTS, prefix: str = "") -> list[str]:
    """Every key of a resolved config as a dotted path, sections opened."""
    keys = []
    for key, value in tree.items():
        keys += valid_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    """`config[a][b] = value` for "a.b", making the sections a recipe left out; `validate` judges the key."""
    node = config
    *parents, leaf = dotted.split(".")
    for i, part in enumerate(parents):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise UserError(f"recipe key '{dotted}': {'.'.join(parents[: i + 1])} is a value, not a section")
        node = node[part]
    node[leaf] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "model.arch=resnet50"]` -> {dotted key: YAML-parsed value}."""
    parsed = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got '{pair}'")
        try:
            parsed[key.strip()] = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {cut(key, 80)}: the value is not valid YAML: {cut(str(e))}") from None
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> dict:
    """Defaults, then the recipe at `path`, then `overrides`; validated and resolved."""
    recipe: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"recipe file not found: {path}")
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"recipe {path} is {path.stat().st_size} bytes; a recipe may hold at most {MAX_BYTES}")
        try:
            recipe = _yaml(path.read_text()) or {}
        except Refused as e:
            raise UserError(f"recipe {path} is refused: {e}") from None
        except yaml.YAMLError as e:
            raise UserError(f"recipe {path} is not valid YAML: {cut(str(e))}") from None
        if not isinstance(recipe, dict):
            raise UserError(f"recipe {path} must be a mapping of sections")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        set_key(recipe, key, value)
    return validate(recipe, path, list(overrides or {}))


def _from_overrides(loc: tuple, overrides: list[str]) -> bool:
    key = ".".join(str(k) for k in loc)
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in overrides)


def _resolve(
    recipe: dict[str, Any], where: str = "", source: Path | None = None, overrides: list[str] = ()
) -> dict[str, Any]:
    try:
        return Recipe.model_validate(recipe).model_dump()
    except ValidationError as e:
        lines = error_lines(e, Recipe, "recipe")
        if source is not None:  # a mistake in the file names the file, as serving.yaml's do; a --set one is plain
            lines = [
                line if _from_overrides(tuple(err["loc"]), overrides) else f"{line} (in {source})"
                for line, err in zip(lines, e.errors(include_url=False), strict=True)
            ]
        raise UserError(where + "; ".join(lines)) from None


def validate(recipe: dict[str, Any], source: Path | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """The resolved config of `recipe` (a whole config or only what differs from the defaults), or a UserError
    naming each mistake (and `source`, the recipe file, for a key that is not one of `overrides`); each
    bag.variants entry must give a valid recipe when applied on top."""
    config = _resolve(recipe, "", source, overrides)
    for i, variant in enumerate(config["bag"]["variants"]):
        trial = copy.deepcopy(config)
        for key, value in variant.items():
            set_key(trial, key, value)
        trial["bag"]["variants"] = []
        _resolve(trial, f"bag.variants.{i}: ")
    return config


def from_scratch(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config` with the settings that only serve pretrained weights made right for a body that starts random,
    and one line for each change (fit logs them and writes the changed config as config.yaml).

    `model.backbone_lr_mult` below 1 keeps pretrained features from being overwritten by a new head's early
    gradients; a random body has nothing to keep, and at 0.1x it hardly moves (EfficientNetV2-S on a folder of
    photos stayed at chance for 8 epochs). It is set to 1 rather than refused: `model.pretrained=none` is then
    the one override that turns any recipe into training from scratch (the README's quickstart does so).
    """
    model = config["model"]
    if model["pretrained"] != "none":
        return config, []
    lines = []
    if model["transfer"] == "linear_probe":  # kept: a frozen random body is a test's fixed feature map
        lines.append("model.transfer=linear_probe with model.pretrained=none trains the head on a random, frozen body")
    if model["backbone_lr_mult"] < 1.0:
        lines.append(
            f"model.backbone_lr_mult {model['backbone_lr_mult']} slows a pretrained body; with model.pretrained=none "
            "the body starts random and learns at the head's rate: set to 1.0"
        )
        config = {**config, "model": {**model, "backbone_lr_mult": 1.0}}
    return config, lines


def save_config(config: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
