"""Datasets (digits, CIFAR-10/100, image folders), their train/val/test splits and data loaders.

Every dataset is reduced to the same shape: a list of class names in index order and, per split,
a sequence of (PIL RGB image, label) items; transforms are applied on top by `Transformed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS, open_rgb
from training import log
from training.digits import stratified_split, write_digits
from training.photos import write_photos

SPLITS = ("train", "val", "test")
# datasets this project can write itself: data.dataset NAME materializes data.root on first use
BUNDLED = {"digits": write_digits, "photos": write_photos}


class ImageFiles(Dataset):
    """(path, label) pairs decoded on access with the same RGB conversion the service uses."""

    def __init__(self, samples: Sequence[tuple[Path, int]], on_bad_image: str = "error"):
        self.samples = list(samples)
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return open_rgb(path), label
            except (OSError, UnidentifiedImageError, ValueError) as e:
                if self.on_bad_image == "error":
                    raise UserError(
                        f"cannot decode image {path}: {e} (set data.on_bad_image=skip to skip such files)"
                    ) from None
                log.warning(f"warning: skipping undecodable image {path}: {e}")
        raise UserError("no image in the dataset could be decoded")


class ArrayImages(Dataset):
    """A torchvision dataset whose items are (PIL image, label), e.g. CIFAR."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image, label = self.dataset[index]
        return image.convert("RGB"), int(label)


class Transformed(Dataset):
    """A view of `base` restricted to `indices` with `transform` applied to the image."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable | None):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.base[self.indices[i]]
        return (self.transform(image) if self.transform else image), label


class Part(NamedTuple):
    """One split, untransformed: the items of `base` at `indices`, and their labels (for stratifying and counting)."""

    base: Dataset
    indices: np.ndarray
    labels: np.ndarray


@dataclass
class Splits:
    """Class names in index order, and each split's untransformed items: `parts["train"]`, "val", "test"."""

    labels: list[str]
    parts: dict[str, Part]

    def dataset(self, split: str, transform: Callable | None) -> Transformed:
        if split not in self.parts:
            raise UserError(f"this dataset has no '{split}' split (it has: {', '.join(self.parts)})")
        part = self.parts[split]
        return Transformed(part.base, part.indices, transform)


def _looks_like_dataset(folder: Path) -> bool:
    """A folder with a train/ of class folders inside: a dataset root, not a class (photos of trains stay a class)."""
    train = folder / "train"
    return train.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir())


def _scan_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class sub-folders of `folder` -> (class names, (image path, label) samples); other files are ignored."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    datasets = [name for name in found if _looks_like_dataset(folder / name)]
    if datasets:
        raise UserError(
            f"{folder} holds datasets, not classes ({', '.join(d + '/' for d in datasets[:3])} "
            f"{'has' if len(datasets) == 1 else 'have'} train/ with class folders): "
            f"data.root is one level too high; pass data.root={folder / datasets[0]}"
        )
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise UserError(f"{folder} has classes the training split lacks: {', '.join(extra[:10])}")
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in found:
        for path in sorted((folder / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((path, index[name]))
    return classes, samples


def _split_from(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `fraction` of each class as val; a class of 2+ images too small to round to one still gives one,
    so the held-out val measures every class (a class of one image is refused by the missing-class check)."""
    parts = stratified_split(labels, {"train": 1.0 - fraction, "val": fraction}, seed)
    train, val = parts["train"], parts["val"]
    short = [c for c in np.unique(labels) if c not in set(labels[val].tolist()) and (labels == c).sum() >= 2]
    if short:
        moved = np.array([train[labels[train] == c][-1] for c in short])
        train, val = np.setdiff1d(train, moved), np.sort(np.concatenate([val, moved]))
    return train, val


def _folder_splits(root: Path, data: dict[str, Any], seed: int) -> Splits:
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    has_train = (root / "train").is_dir()
    train_dir = root / "train" if has_train else root
    classes, train_samples = _scan_folder(train_dir)
    if not train_samples:
        raise UserError(f"no images found in {train_dir} (expected {train_dir}/<class>/<image>)")
    parts: dict[str, Part] = {}
    train_base = ImageFiles(train_samples, data["on_bad_image"])
    train_labels = np.array([label for _, label in train_samples], dtype=int)
    if has_train and (root / "val").is_dir():
        parts["train"] = Part(train_base, np.arange(len(train_samples)), train_labels)
    else:  # no val/: hold out a stratified fraction of train
        tr, va = _split_from(train_labels, data["val_fraction"], seed=0)
        parts["train"] = Part(train_base, tr, train_labels[tr])
        parts["val"] = Part(train_base, va, train_labels[va])
    for split in ("val", "test"):
        if has_train and (root / split).is_dir() and split not in parts:
            _, samples = _scan_folder(root / split, classes)
            labels = np.array([label for _, label in samples], dtype=int)
            parts[split] = Part(ImageFiles(samples, data["on_bad_image"]), np.arange(len(samples)), labels)
    empty = [name for name, n in zip(classes, np.bincount(train_labels, minlength=len(classes))) if n == 0]
    if empty:
        raise UserError(f"class folder {train_dir / empty[0]} holds no images; add images or remove the folder")
    for split, part in parts.items() if len(classes) > 1 else ():  # one class: build_splits refuses it its own way
        folder = root / split if has_train and (root / split).is_dir() else train_dir
        _check_classes(folder, split, classes, part.labels, data)
    return Splits(classes, parts)


def _check_classes(folder: Path, split: str, classes: list[str], labels: np.ndarray, data: dict[str, Any]) -> None:
    """A split without some of train's classes measures nothing about them: refused unless asked for."""
    if split == "train" or data["allow_missing_classes"]:
        return
    missing = [name for name, n in zip(classes, np.bincount(labels, minlength=len(classes))) if n == 0]
    if missing:
        where = f"{folder}/" if folder.name == split else f"the {split} split held out of {folder}"
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(
            f"{where} has no images of {len(missing)} class(es) that train has: {shown}; add some, "
            "or set data.allow_missing_classes=true to measure without them"
        )


def describe(splits: Splits) -> list[str]:
    """One line per split: its classes (count, first names) and images per class (min-max)."""
    lines = []
    names = ", ".join(splits.labels[:5]) + (", ..." if len(splits.labels) > 5 else "")
    for split, part in splits.parts.items():
        counts = np.bincount(part.labels.astype(int), minlength=len(splits.labels))
        present = int((counts > 0).sum())
        lines.append(
            f"{split}: {len(part.labels)} images, {present} of {len(splits.labels)} classes ({names}), "
            f"{counts.min()}-{counts.max()} images a class"
        )
    return lines


def _cifar_splits(name: str, root: Path, data: dict[str, Any]) -> Splits:
    from torchvision import datasets

    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    try:
        train = cls(str(root), train=True, download=data["download"])
        test = cls(str(root), train=False, download=data["download"])
    except RuntimeError as e:
        raise UserError(
            f"{name} not found under {root} ({e}); set data.download=true to fetch it, or point "
            f"data.root at a folder holding the extracted '{cls.base_folder}' directory"
        ) from None
    except OSError as e:  # no network
        raise UserError(f"could not download {name} into {root}: {e}") from None
    train_labels, test_labels = np.array(train.targets), np.array(test.targets)
    tr, va = _split_from(train_labels, data["val_fraction"], seed=0)
    base = ArrayImages(train)
    return Splits(
        list(train.classes),
        {
            "train": Part(base, tr, train_labels[tr]),
            "val": Part(base, va, train_labels[va]),
            "test": Part(ArrayImages(test), np.arange(len(test_labels)), test_labels),
        },
    )


def _limit(parts: dict[str, Part], limit: int, seed: int) -> dict[str, Part]:
    """Keep `limit` images per split, spread over classes (a seeded shuffle, then the first `limit`)."""
    out = {}
    rng = np.random.default_rng(seed)
    for split, (base, indices, labels) in parts.items():
        if limit and len(indices) > limit:
            keep = np.sort(rng.permutation(len(indices))[:limit])
            indices, labels = indices[keep], labels[keep]
        out[split] = Part(base, indices, labels)
    return out


def build_splits(data: dict[str, Any]) -> Splits:
    """The recipe's `data` section -> class names and untransformed splits."""
    name, root = data["dataset"], Path(data["root"])
    if name in BUNDLED:
        splits = _folder_splits(BUNDLED[name](root), data, seed=0)
    elif name in ("cifar10", "cifar100"):
        splits = _cifar_splits(name, root, data)
    else:
        splits = _folder_splits(root, data, seed=0)
    if len(splits.labels) < 2:
        raise UserError(
            f"dataset at {root} has {len(splits.labels)} class ({', '.join(splits.labels)}); "
            "a classifier needs at least two class folders"
        )
    splits.parts = _limit(splits.parts, data["limit"], seed=0)
    return splits


def train_loader(
    dataset: Dataset, data: dict[str, Any], seed: int, rank: int, world: int, pin: bool
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader; one sampler for 1 or K processes, so K-process batches union to the 1-process ones."""
    if data["batch_size"] % world:
        raise UserError(f"data.batch_size {data['batch_size']} is not divisible by the {world} processes")
    per_rank = data["batch_size"] // world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=data["workers"],
        pin_memory=pin,
        drop_last=len(dataset) // world > per_rank,  # a last batch of 1 breaks BatchNorm
        persistent_workers=False,
    )
    return loader, sampler


def eval_loader(dataset: Dataset, data: dict[str, Any], pin: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=data["eval_batch_size"], shuffle=False, num_workers=data["workers"], pin_memory=pin
    )
