"""Checkpoints: plain dicts of tensors and builtins, loadable with `torch.load(weights_only=True)`.

The format (docs/contract.md, "The checkpoint") is built and read here: `checkpoint_dict` is best.pt, and
`with_training_state` adds what last.pt needs to resume, which `restore` puts back.
"""

from __future__ import annotations

import copy
import os
import platform
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision

from core.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from training.ema import EMA

# what `load` reads; a checkpoint written by a newer version of this code is refused rather than misread
# (a file without the key predates it and is version 1)
FORMAT_VERSION = 1
# What export and evaluate need from a checkpoint; a file without these is not one of ours.
REQUIRED_KEYS = ("arch", "num_classes", "labels", "preprocess", "config", "model")


def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def checkpoint_dict(
    model: nn.Module, ema: EMA | None, labels: list[str], preprocess: dict, config: dict, metrics: dict
) -> dict[str, Any]:
    """The checkpoint (docs/contract.md, "The checkpoint"): weights plus what export and evaluate rebuild it from."""
    return {
        "format_version": FORMAT_VERSION,
        "arch": config["model"]["arch"],
        "num_classes": len(labels),
        "labels": list(labels),
        "preprocess": dict(preprocess),
        "config": copy.deepcopy(config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()} if ema else None,
        # which weights the run selected its best epoch by; export and evaluate use these
        "selected_weights": "ema" if ema else "model",
        "metrics": metrics,
        "versions": versions(),
    }


def with_training_state(
    checkpoint: dict[str, Any], optimizer, scheduler, scaler, ema: EMA | None, epoch: int, history: list, best: tuple
) -> dict[str, Any]:
    """`checkpoint` plus what `--resume` continues from (last.pt): optimizer, scheduler, scaler, EMA updates,
    epoch, history, the best score so far and every random generator."""
    checkpoint.update(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
        ema_updates=ema.updates if ema else 0, epoch=epoch, history=history, best=list(best), rng=rng_state(),
    )  # fmt: skip
    return checkpoint


def restore(
    state: dict[str, Any], model: nn.Module, optimizer, scheduler, scaler, ema: EMA | None
) -> tuple[list, tuple, int]:
    """Put a last.pt back into the objects training goes on with; (history, best score, first epoch to run)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.load_state_dict(state["ema"], state["ema_updates"])
    set_rng_state(state["rng"])
    return state["history"], tuple(state["best"]), state["epoch"] + 1


def save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write atomically so an interrupted run never leaves a half-written `last.pt`."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle of foreign objects, not a torch file
        raise UserError(f"cannot read checkpoint {path}: {load_error_reason(e)}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a checkpoint of this project: missing {', '.join(missing)}")
    version = checkpoint.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format_version {version!r}, newer than the {FORMAT_VERSION} this code reads: "
            "update this project to load it"
        )
    return checkpoint


def load_error_reason(error: Exception) -> str:
    """The informative line of a torch.load failure (weights_only errors bury it mid-message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unpickler error" in line or "Unsupported global" in line:
            return line
    return lines[0] if lines else type(error).__name__


def rng_state() -> dict[str, Any]:
    """Every generator a training step draws from, in weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
