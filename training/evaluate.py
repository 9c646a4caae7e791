"""`python -m training evaluate CKPT`: top-1, top-5, loss and per-class accuracy as one JSON object,
plus a confusion-matrix picture beside the checkpoint.

    python -m training evaluate runs/digits-resnet18/best.pt --split test
    python -m training evaluate runs/x/best.pt --data path/to/imagefolder --tta hflip
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from core.errors import UserError
from training import checkpoint as ckpt
from training.data import BUNDLED, build_splits, eval_loader
from training.distributed import resolve_device
from training.engine import evaluate
from training.models import model_from_checkpoint
from training.plots import plot_confusion
from training.transforms import eval_transform


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    tta: str = "none",
    weights: str = "best",
    device: str = "auto",
    batch_size: int | None = None,
    confusion_png: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of its own dataset, or of another folder with the same classes."""
    checkpoint = ckpt.load(path)
    data_cfg = copy.deepcopy(checkpoint["config"]["data"])
    if data_root is not None:
        data_cfg["root"] = data_root
        bundled = data_cfg["dataset"] in BUNDLED  # another folder is read as it is, not written as the bundled set
        data_cfg["dataset"] = dataset or ("imagefolder" if bundled else data_cfg["dataset"])
    elif dataset is not None:
        data_cfg["dataset"] = dataset
    data_cfg["limit"] = 0
    if batch_size:
        data_cfg["eval_batch_size"] = batch_size
    splits = build_splits(data_cfg)
    if splits.labels != checkpoint["labels"]:
        raise UserError(
            f"the checkpoint has {checkpoint['num_classes']} classes {checkpoint['labels'][:10]}, "
            f"the data at {data_cfg['root']} has {len(splits.labels)} {splits.labels[:10]}"
        )
    torch_device = resolve_device(device)
    model = model_from_checkpoint(checkpoint, weights).to(torch_device)
    loader = eval_loader(splits.dataset(split, eval_transform(checkpoint["preprocess"])), data_cfg, False)
    result = evaluate(model, loader, torch_device, checkpoint["num_classes"], tta_hflip=tta == "hflip", show=True)
    confusion = result.pop("confusion").numpy()
    per_class = confusion.diagonal() / confusion.sum(1).clip(min=1)
    result["per_class"] = {label: round(float(a), 6) for label, a in zip(checkpoint["labels"], per_class)}
    result["split"], result["tta"] = split, tta
    png = Path(confusion_png) if confusion_png else Path(path).with_name(f"confusion_{split}.png")
    plot_confusion(confusion, checkpoint["labels"], png, title=f"{checkpoint['arch']} {split}: acc {result['acc']:.4f}")
    result["confusion_png"] = str(png)
    return result
