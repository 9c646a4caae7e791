"""torchvision classification models by name: weights, a new head, and the weights' preprocessing.

The preprocessing (resize, crop, interpolation, mean, std) is read from the weights enum where the
model is chosen, stored in the checkpoint, and from there travels into the ONNX file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from core.errors import UserError
from training.checkpoint import load_error_reason

# Used when an architecture has no published weights to read preprocessing from.
FALLBACK_PREPROCESS = {
    "resize_size": 256,
    "crop_size": 224,
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def supported_archs() -> list[str]:
    return sorted(list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """A name torchvision does not know is refused with the nearest known ones, not all ~80 of them."""
    archs = supported_archs()
    if arch in archs:
        return
    name = arch.lower().replace("-", "_")
    near = difflib.get_close_matches(name, archs, 3, 0.6) or [a for a in archs if a.startswith(name)][:6]
    if near:
        raise UserError(f"unknown model.arch '{arch}': did you mean {' or '.join(near)}?")
    raise UserError(
        f"unknown model.arch '{arch}': torchvision has no model of that name or near it "
        f"({len(archs)} names: python -c 'import torchvision; print(torchvision.models.list_models())')"
    )


def _weights_enum(arch: str, name: str = "DEFAULT") -> Any:
    try:
        return get_model_weights(arch)[name]
    except (KeyError, ValueError):
        options = ", ".join(w.name for w in get_model_weights(arch))
        raise UserError(f"{arch} has no weights '{name}'; available: DEFAULT, {options}") from None


def weights_preprocess(arch: str, weights_name: str = "DEFAULT") -> dict[str, Any]:
    """The eval preprocessing torchvision publishes with the weights (e.g. V2-L: 480, bicubic, 0.5)."""
    try:
        transform = _weights_enum(arch, weights_name).transforms()
    except UserError:
        return dict(FALLBACK_PREPROCESS)
    return {
        "resize_size": int(transform.resize_size[0]),
        "crop_size": int(transform.crop_size[0]),
        "interpolation": transform.interpolation.value,
        "mean": [float(v) for v in transform.mean],
        "std": [float(v) for v in transform.std],
    }


def find_head(model: nn.Module) -> str:
    """Dotted name of the final classifier: the last nn.Linear in registration order."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UserError(f"cannot find a Linear classifier head in {type(model).__name__}")
    return linears[-1]


def _set_module(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _build(arch: str, model_cfg: dict[str, Any]) -> tuple[nn.Module, float]:
    """The ImageNet-shaped network; returns it and the head dropout still to add ourselves."""
    kwargs = {}
    if model_cfg["stochastic_depth_prob"] is not None:
        kwargs["stochastic_depth_prob"] = float(model_cfg["stochastic_depth_prob"])
    dropout = model_cfg["dropout"]
    try:
        model = get_model(arch, weights=None, **kwargs, **({"dropout": dropout} if dropout is not None else {}))
        return model, 0.0
    except TypeError as e:
        if "stochastic_depth_prob" in str(e):
            raise UserError(f"{arch} has no stochastic depth; remove model.stochastic_depth_prob") from None
        if "dropout" not in str(e):
            raise
    # the architecture takes no dropout argument (e.g. ResNet): put a Dropout in front of the head
    return get_model(arch, weights=None, **kwargs), float(dropout)


def _replace_head(model: nn.Module, head: str, num_classes: int, dropout: float) -> None:
    old = model.get_submodule(head)
    new: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout:
        new = nn.Sequential(nn.Dropout(dropout), new)
    _set_module(model, head, new)


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A local weights file: a plain state dict or one of our checkpoints -> (state, checkpoint or None)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
        raise UserError(f"cannot read weights file {path}: {load_error_reason(e)}") from None
    if isinstance(obj, dict) and "model" in obj and "arch" in obj:
        return obj["model"], obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise UserError(f"{path} is neither a state dict nor a checkpoint of this project")


def _imagenet_state(arch: str, weights_name: str) -> dict[str, torch.Tensor]:
    weights = _weights_enum(arch, weights_name)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, socket errors, hash mismatch...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(
            f"could not download {weights} from {weights.url} ({str(e).splitlines()[0]}); "
            f"download it elsewhere and set model.pretrained=/path/to/{Path(weights.url).name}, "
            f"or place it at {cache}"
        ) from None


def _load_body(model: nn.Module, head: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight except the classifier head, which is new for this dataset."""
    state = {k: v for k, v in state.items() if not (k == head or k.startswith(head + "."))}
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head + ".")]
    if missing or result.unexpected_keys:
        raise UserError(
            f"weights {source} do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def build_model(
    model_cfg: dict[str, Any], num_classes: int, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any], str]:
    """Recipe `model` section -> (model with a `num_classes` head, preprocess dict, head name)."""
    arch = model_cfg["arch"]
    check_arch(arch)
    model, extra_dropout = _build(arch, model_cfg)
    head = find_head(model)
    pretrained = str(model_cfg["pretrained"])
    preprocess = weights_preprocess(arch)
    if pretrained in ("imagenet", "DEFAULT") or pretrained.startswith("IMAGENET"):
        name = "DEFAULT" if pretrained == "imagenet" else pretrained
        preprocess = weights_preprocess(arch, name)
        _load_body(model, head, _imagenet_state(arch, name), f"{arch} {name}")
    elif pretrained != "none":
        state, checkpoint = load_state(pretrained)
        if checkpoint is not None:
            if checkpoint["arch"] != arch:
                raise UserError(f"{pretrained} is a {checkpoint['arch']} checkpoint, not {arch}")
            preprocess = dict(checkpoint["preprocess"])
        _load_body(model, head, state, pretrained)
    _replace_head(model, head, num_classes, extra_dropout)
    for key, value in (overrides or {}).items():
        if value is not None:
            preprocess[key] = value
    return model, preprocess, head


def resolve_weights(checkpoint: dict[str, Any], weights: str) -> str:
    """`best` -> the weights the run selected (EMA when it kept one); `model` / `ema` as asked."""
    if weights == "best":
        return checkpoint.get("selected_weights", "model")
    if weights == "ema" and checkpoint.get("ema") is None:
        raise UserError("this checkpoint has no EMA weights; use the plain model weights")
    return weights


def model_from_checkpoint(checkpoint: dict[str, Any], weights: str = "best") -> nn.Module:
    """Rebuild the network a checkpoint was trained with and load its weights (see `resolve_weights`)."""
    model_cfg = dict(checkpoint["config"]["model"], pretrained="none")
    model, _, _ = build_model(model_cfg, checkpoint["num_classes"])
    weights = resolve_weights(checkpoint, weights)
    model.load_state_dict(checkpoint["ema"] if weights == "ema" else checkpoint["model"])
    return model.eval()


def head_parameters(model: nn.Module, head: str) -> set[int]:
    return {id(p) for p in model.get_submodule(head).parameters()}


def freeze_backbone(model: nn.Module, head: str) -> None:
    """Linear probe: only the head learns."""
    head_ids = head_parameters(model, head)
    for p in model.parameters():
        p.requires_grad_(id(p) in head_ids)


def set_train_mode(model: nn.Module, head: str, linear_probe: bool) -> None:
    """model.train(), except that a linear probe keeps the frozen body's BatchNorm/Dropout in eval."""
    model.train()
    if linear_probe:
        for module in model.modules():
            module.eval()
        model.get_submodule(head).train()
