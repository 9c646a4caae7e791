"""Self-training with a noisy student (Xie et al. 2020, "Noisy Student").

    python -m training self-train --config RECIPE.yaml --unlabeled DIR --iterations K --out runs/NAME

runs/NAME/iter0 is the teacher trained on the labelled data alone. Each iteration i >= 1: the
previous model labels every unlabelled image under its clean eval preprocessing, the kept labels
go to iter<i>/pseudo_labels.csv, and a student no smaller than the teacher trains from the
recipe's own start on labelled + pseudo-labelled images with the recipe's noise (augmentation,
dropout, stochastic depth). The student is the next teacher. `self_train.teacher_labels`
(--teacher-labels FILE...) gives iteration i its teacher's labels from the i-th file instead (`service.predict
--probabilities` of that teacher's ONNX export, e.g. on a Ray cluster; training/unlabeled.py). runs/NAME/ gets
metrics.csv and curves.png (one row / point per iteration), summary.json and best.pt (the last student).
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path
from typing import Any

from core.errors import UserError
from training import checkpoint as ckpt
from training import log
from training.config import save_config
from training.data import build_splits
from training.distributed import resolve_device
from training.fit import fit
from training.models import build_model
from training.plots import plot_iterations
from training.tasks import SupervisedTask
from training.unlabeled import find_images, pseudo_label, read_labels

COLUMNS = ["iteration", "arch", "pseudo_labelled", "best_val_acc", "test_acc", "train_seconds"]


def _parameters(arch: str, model_cfg: dict[str, Any], num_classes: int) -> int:
    model, _, _ = build_model(dict(model_cfg, arch=arch, pretrained="none"), num_classes)
    return sum(p.numel() for p in model.parameters())


def student_archs(config: dict[str, Any], num_classes: int) -> list[str]:
    """The arch of iteration 0..K; each at least as large as the one before (a student never shrinks)."""
    chosen = config["self_train"]["student_archs"]
    iterations = config["self_train"]["iterations"]
    if chosen and len(chosen) != iterations:
        raise UserError(f"self_train.student_archs lists {len(chosen)} archs for {iterations} iterations")
    archs = [config["model"]["arch"], *(chosen or [config["model"]["arch"]] * iterations)]
    sizes = [_parameters(a, config["model"], num_classes) for a in dict.fromkeys(archs)]
    size_of = dict(zip(dict.fromkeys(archs), sizes))
    for teacher, student in zip(archs, archs[1:]):
        if size_of[student] < size_of[teacher]:
            raise UserError(
                f"student {student} ({size_of[student] / 1e6:.1f}M parameters) is smaller than its teacher "
                f"{teacher} ({size_of[teacher] / 1e6:.1f}M); a noisy student must be at least as large"
            )
    return archs


@log.to_run_folder
def self_train(config: dict[str, Any], out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    st = config["self_train"]
    if not st["unlabeled"]:
        raise UserError("self-train needs --unlabeled DIR (a folder of images without labels)")
    unlabeled = find_images(st["unlabeled"])
    archs = student_archs(config, len(build_splits(config["data"]).labels))  # before any training: fail fast
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    rows: list[dict[str, Any]] = []
    teacher_path: Path | None = None
    for iteration in range(st["iterations"] + 1):
        run = out / f"iter{iteration}"
        cfg = copy.deepcopy(config)
        cfg["model"]["arch"] = archs[iteration]
        if resume and (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
        else:
            task = None
            if teacher_path is not None:
                files = st["teacher_labels"]
                labels_from = files[iteration - 1] if iteration - 1 < len(files) else None
                task = SupervisedTask(extra=_pseudo_labels(teacher_path, st, run, config["device"], labels_from))
            summary = fit(cfg, run, task=task)
        if not summary:  # not the main process under torchrun
            return {}
        rows.append(
            {
                "iteration": iteration, "arch": cfg["model"]["arch"],
                "pseudo_labelled": summary.get("pseudo_labelled_images", 0),
                "best_val_acc": summary["best_val_acc"], "test_acc": summary.get("test_acc", ""),
                "train_seconds": summary["train_seconds"],
            }
        )  # fmt: skip
        teacher_path = run / "best.pt"
        _write(out, rows, config)
    shutil.copy(teacher_path, out / "best.pt")
    result = {
        "iterations": rows,
        "unlabeled_images": len(unlabeled),
        "teacher_test_acc": rows[0]["test_acc"],
        "final_test_acc": rows[-1]["test_acc"],
    }
    if rows[0]["test_acc"] != "":
        result["gain"] = round(rows[-1]["test_acc"] - rows[0]["test_acc"], 6)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info(f"self-training: {json.dumps({k: v for k, v in result.items() if k != 'iterations'})}")
    return result


def _pseudo_labels(
    teacher_path: Path, st: dict[str, Any], run: Path, device: str, labels_from: str | None = None
) -> tuple[list[Path], Any]:
    """`pseudo-label` into run/pseudo_labels.csv, then the student's targets read back from that file."""
    counts = pseudo_label(teacher_path, st["unlabeled"], run / "pseudo_labels.csv", st["threshold"], st["balance"],
                          resolve_device(device), labels_from=labels_from)  # fmt: skip
    log.info(f"{counts['rows']} pseudo-labels from {counts['images']} images by {teacher_path} -> {run}")
    return read_labels(run / "pseudo_labels.csv", ckpt.load(teacher_path)["labels"], st["soft"])


def _write(out: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_iterations(rows, out / "curves.png", title=f"self-training {config['model']['arch']}")
