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
    return validate(recipe)


def _resolve(recipe: dict[str, Any], where: str = "") -> dict[str, Any]:
    try:
        return Recipe.model_validate(recipe).model_dump()
    except ValidationError as e:
        raise UserError(where + "; ".join(error_lines(e, Recipe, "recipe"))) from None


def validate(recipe: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of `recipe` (a whole config or only what differs from the defaults), or a UserError
    naming each mistake; each bag.variants entry must give a valid recipe when applied on top."""
    config = _resolve(recipe)
    for i, variant in enumerate(config["bag"]["variants"]):
        trial = copy.deepcopy(config)
        for key, value in variant.items():
            set_key(trial, key, value)
        trial["bag"]["variants"] = []
        _resolve(trial, f"bag.variants.{i}: ")
    return config


def save_config(config: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
