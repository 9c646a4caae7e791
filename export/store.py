"""Put an exported graph into the BentoML model store, where the service loads it from."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core import metadata
from core.errors import UserError


def check_name(name: str) -> None:
    """Fail before a minutes-long export, not after it, when the store would refuse the name."""
    import bentoml

    try:
        bentoml.Tag.from_taglike(name)
    except ValueError as e:
        raise UserError(f"cannot store model as '{name}': {e}") from None


def store_model(onnx_path: str | Path, name: str, meta: dict[str, Any]) -> str:
    """Copy the ONNX file into a new model-store entry `name:<version>` and return its tag.

    BentoML labels (shown by `bentoml models list`) hold the short facts; the entry's metadata holds
    the class names and preprocessing, so the store alone says what the model expects and returns.
    """
    import bentoml
    from bentoml.exceptions import BentoMLException

    labels = {
        "task": "image-classification",
        "format": "onnx",
        "arch": meta["arch"],
        "classes": str(len(meta["labels"])),
        "precision": str(meta.get("precision", "fp32")),
        "input": f"uint8[N,{meta['crop_size']},{meta['crop_size']},3]",
    }
    info = metadata.stored(meta)
    try:
        with bentoml.models.create(name, labels=labels, metadata=info) as model:
            shutil.copy(onnx_path, model.path_of(metadata.MODEL_FILE))
    except (BentoMLException, ValueError) as e:
        raise UserError(f"cannot store model as '{name}': {e}") from None
    return str(model.tag)
