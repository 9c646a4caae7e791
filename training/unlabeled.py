"""Unlabelled image folders and pseudo-labels: the teacher's side of self-training.

    python -m training pseudo-label runs/teacher/best.pt --images data/unlabeled --out labels.csv

    python -m service.predict models/teacher.onnx data/unlabeled --out teacher/ --ray --probabilities
    python -m training pseudo-label runs/teacher/best.pt --teacher-labels teacher/ --out labels.csv

labels.csv has one row per kept image: `path, label, confidence, prob_<class>...` (the teacher's
full distribution, so a student can take soft or hard labels from the same file). With balancing a
row may repeat: classes with few confident images are repeated up to the per-class count.

The teacher's pass over a large unlabelled set can run elsewhere (on a Ray cluster, above): its rows
(`service.predict --probabilities`: a folder of Parquet parts, one .parquet file, or a .csv) then
take the place of labelling in this process, and the same selection (threshold, balance) runs on them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS
from training import checkpoint as ckpt
from training.data import ImageFiles, Transformed
from training.engine import predict
from training.models import model_from_checkpoint
from training.transforms import eval_transform


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder`, in any sub-folder layout, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"unlabelled image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return paths


def unlabeled_images(paths: list[Path]) -> ImageFiles:
    """(PIL image, -1) items: -1 marks "no label" for distillation's loss."""
    return ImageFiles([(p, -1) for p in paths])


def teacher_probabilities(
    checkpoint: dict[str, Any], paths: list[Path], device: torch.device, batch_size: int = 256, workers: int = 0
) -> np.ndarray:
    """The checkpoint's class probabilities [N, C] for each image under its own eval preprocessing (no noise)."""
    model = model_from_checkpoint(checkpoint).to(device)
    dataset = Transformed(unlabeled_images(paths), range(len(paths)), eval_transform(checkpoint["preprocess"]))
    logits, _ = predict(model, DataLoader(dataset, batch_size=batch_size, num_workers=workers), device, show=True)
    return logits.softmax(1).numpy()


def _teacher_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of service.predict's output: Parquet (a folder of parts or one file; pyarrow read lazily,
    as it is the bulk extra's) or CSV (probabilities and top_k as JSON text)."""
    if path.is_dir() or path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {path} needs pyarrow: pip install 'imgclf[bulk]'") from None
        parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
        if not parts:
            raise UserError(f"{path} holds no Parquet parts (part-*.parquet) of python -m service.predict --ray")
        return [row for part in parts for row in pq.read_table(part).to_pylist()]
    if path.suffix.lower() != ".csv":
        raise UserError(f"teacher labels must be Parquet (a folder of parts or .parquet) or .csv, got {path}")
    with path.open(newline="") as f:
        rows = [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
    for row in rows:
        if row.get("probabilities") is not None:
            row["probabilities"] = json.loads(row["probabilities"])
    return rows


def teacher_labels(path: str | Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """(paths, probabilities [N, C]) from a teacher's run of `python -m service.predict --probabilities`,
    sorted by path as find_images lists a folder, so that selection ties break the same way. Files the
    teacher could not decode are left out: they are no training data."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"teacher labels not found: {path}")
    rows = [r for r in _teacher_rows(path) if r.get("error") is None]
    if not rows:
        raise UserError(f"{path} holds no classified image")
    if "probabilities" not in rows[0] or rows[0]["probabilities"] is None:
        raise UserError(f"{path} has no probabilities column: rerun python -m service.predict with --probabilities")
    for row in rows:
        if len(row["probabilities"]) != len(labels) or labels[int(row["index"])] != row["label"]:
            raise UserError(
                f"{path} was labelled with other classes than the teacher's {labels[:10]} (row {row['path']}: "
                f"'{row['label']}' of {len(row['probabilities'])} classes)"
            )
    rows.sort(key=lambda r: Path(r["path"]))
    return [Path(r["path"]) for r in rows], np.asarray([r["probabilities"] for r in rows], dtype=np.float64)


def select(probs: np.ndarray, threshold: float = 0.0, balance: bool = False) -> np.ndarray:
    """Row indices to keep: confidence >= threshold, then optionally the same count for every class.

    Balancing (Noisy Student): K = the mean count per predicted class; larger classes keep their K most
    confident images, smaller ones repeat theirs (most confident first) up to K.
    """
    confidence, predicted = probs.max(1), probs.argmax(1)
    kept = np.flatnonzero(confidence >= threshold)
    if kept.size == 0:
        raise UserError(
            f"no image reaches the pseudo-label threshold {threshold} (the most confident is "
            f"{confidence.max():.3f}); lower self_train.threshold"
        )
    if not balance:
        return kept
    per_class = [kept[predicted[kept] == c] for c in range(probs.shape[1])]
    per_class = [idx[np.argsort(-confidence[idx], kind="stable")] for idx in per_class if idx.size]
    k = round(np.mean([idx.size for idx in per_class]))
    return np.concatenate([np.resize(idx, k) for idx in per_class])


def write_labels(path: str | Path, paths: list[Path], probs: np.ndarray, labels: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "confidence", *(f"prob_{name}" for name in labels)])
        for image, p in zip(paths, probs):
            best = int(p.argmax())
            writer.writerow([str(image), labels[best], f"{p[best]:.6f}", *(f"{v:.6g}" for v in p)])


def read_labels(path: str | Path, labels: list[str], soft: bool = True) -> tuple[list[Path], np.ndarray]:
    """labels.csv -> (paths, targets [N, C]): the teacher's distribution, or its one-hot argmax when not soft."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [f"prob_{name}" for name in labels]
    if not rows or any(c not in rows[0] for c in columns):
        raise UserError(f"{path} has no pseudo-labels for the classes {labels[:10]}")
    probs = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float32)
    return [Path(r["path"]) for r in rows], as_targets(probs, soft)


def as_targets(probs: np.ndarray, soft: bool) -> np.ndarray:
    """Teacher probabilities -> training targets: as they are (soft) or the one-hot argmax (hard)."""
    if soft:
        return probs.astype(np.float32)
    return np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)]


def pseudo_label(
    checkpoint_path: str | Path,
    images: str | Path,
    out: str | Path,
    threshold: float = 0.0,
    balance: bool = False,
    device: torch.device | None = None,
    batch_size: int = 256,
    labels_from: str | Path | None = None,
) -> dict[str, Any]:
    """Label every image under `images` with the checkpoint, or take its labels from `labels_from` (the
    teacher's `service.predict --probabilities` run; `images` is then not read); write the kept rows to
    `out`; return counts."""
    checkpoint = ckpt.load(checkpoint_path)
    if labels_from is not None:
        paths, probs = teacher_labels(labels_from, checkpoint["labels"])
    else:
        paths = find_images(images)
        probs = teacher_probabilities(checkpoint, paths, device or torch.device("cpu"), batch_size)
    keep = select(probs, threshold, balance)
    write_labels(out, [paths[i] for i in keep], probs[keep], checkpoint["labels"])
    predicted = np.bincount(probs[keep].argmax(1), minlength=len(checkpoint["labels"]))
    return {
        "images": len(paths),
        "rows": int(keep.size),
        "distinct_images": int(np.unique(keep).size),
        "mean_confidence": round(float(probs[keep].max(1).mean()), 4),
        "per_class": {name: int(n) for name, n in zip(checkpoint["labels"], predicted)},
        "out": str(out),
    }
