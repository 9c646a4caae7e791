"""Checkpoints: plain dicts of tensors and builtins, loadable with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from core.errors import UserError

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
