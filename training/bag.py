"""Bagged ensembles: M members of one recipe that differ by seed, and optionally by bootstrap resample
and by per-member recipe variants (another arch, other augmentation).

    python -m training bag --config RECIPE.yaml --members 3 --out runs/NAME [--bootstrap]

runs/NAME/member<i>/ are ordinary runs. runs/NAME/ gets report.md, summary.json and members.png:
each member's accuracy, their mean +- std, the soft and hard vote of all members and the gain of
the vote over the mean member. Votes are the service's own (`core.voting`), so the figures here
are what `/ensemble` answers. The command ends by printing the lines that export the members and
fuse them into one ensemble graph. Members train one after another (each with DDP under torchrun).
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.voting import vote
from training import checkpoint as ckpt
from training import log
from training.config import save_config, set_key, validate
from training.data import build_splits, eval_loader
from training.distributed import resolve_device
from training.engine import predict
from training.fit import fit
from training.models import model_from_checkpoint
from training.plots import plot_members
from training.tasks import SupervisedTask
from training.transforms import eval_transform


def member_config(config: dict[str, Any], index: int) -> dict[str, Any]:
    """Seed + index, and the index-th variant (cycled) applied on top of the recipe."""
    cfg = copy.deepcopy(config)
    cfg["seed"] = config["seed"] + index
    variants = config["bag"]["variants"]
    for key, value in (variants[index % len(variants)] if variants else {}).items():
        set_key(cfg, key, value)
    return validate(cfg)


def member_probabilities(paths: list[Path], data_cfg: dict[str, Any], device: torch.device) -> tuple:
    """([M, N, C] probabilities of each member on the test split (val if none), labels [N], split name)."""
    splits = build_splits(data_cfg)
    split = "test" if "test" in splits.parts else "val"
    probs = []
    for path in paths:
        checkpoint = ckpt.load(path)
        model = model_from_checkpoint(checkpoint).to(device)
        loader = eval_loader(splits.dataset(split, eval_transform(checkpoint["preprocess"])), data_cfg, False)
        logits, labels = predict(model, loader, device)
        probs.append(logits.softmax(1).numpy())
    return np.stack(probs), labels.numpy(), split


@log.to_run_folder
def bag(config: dict[str, Any], out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    count, bootstrap = config["bag"]["members"], config["bag"]["bootstrap"]
    paths = []
    for i in range(count):
        cfg = member_config(config, i)
        run = out / f"member{i}"
        log.info(f"member {i + 1}/{count}: {cfg['model']['arch']}, seed {cfg['seed']} -> {run}")
        if not (resume and (run / "summary.json").exists()):
            task = SupervisedTask(bootstrap_seed=cfg["seed"] if bootstrap else None)
            if not fit(cfg, run, task=task):
                return {}  # not the main process under torchrun
        paths.append(run / "best.pt")

    probs, labels, split = member_probabilities(paths, config["data"], resolve_device(config["device"]))
    accs = [float((p.argmax(1) == labels).mean()) for p in probs]
    soft = float((vote(probs, "soft").winner == labels).mean())
    hard = float((vote(probs, "hard").winner == labels).mean())
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    summary = {
        "members": count, "split": split, "n": int(labels.size), "bootstrap": bootstrap,
        "member_acc": [round(a, 6) for a in accs], "member_acc_mean": round(mean, 6), "member_acc_std": round(std, 6),
        "soft_vote_acc": round(soft, 6), "hard_vote_acc": round(hard, 6),
        "gain_soft": round(soft - mean, 6), "gain_hard": round(hard - mean, 6),
        "checkpoints": [str(p) for p in paths],
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    names = [f"member{i}" for i in range(count)] + ["soft vote", "hard vote"]
    plot_members(names, [*accs, soft, hard], out / "members.png", title=f"bag of {count}: {split} accuracy")
    lines = export_lines(paths, out.name)
    _report(out, summary, names, [*accs, soft, hard], lines)
    log.info(
        f"bag of {count} on {split}: members {mean:.4f} +- {std:.4f}, soft vote {soft:.4f} ({soft - mean:+.4f}), "
        f"hard vote {hard:.4f} ({hard - mean:+.4f}); report: {out / 'report.md'}"
    )
    log.info("export the members and fuse them into one ensemble graph:\n" + "\n".join(lines))
    return summary


def export_lines(paths: list[Path], name: str) -> list[str]:
    onnx = [f"models/{name}-{p.parent.name}.onnx" for p in paths]
    singles = [f"python -m export {p} --out {o}" for p, o in zip(paths, onnx)]
    return [*singles, f"python -m export ensemble {' '.join(onnx)} --out models/{name}.onnx --store {name}"]


def _report(out: Path, summary: dict[str, Any], names: list[str], accs: list[float], lines: list[str]) -> None:
    rows = "\n".join(f"| {n} | {a:.4f} |" for n, a in zip(names, accs))
    text = f"""# Bag of {summary["members"]} ({summary["split"]} split, {summary["n"]} images)

| model | accuracy |
| --- | --- |
{rows}

Members: {summary["member_acc_mean"]:.4f} +- {summary["member_acc_std"]:.4f} (mean +- std).
Soft vote gains {summary["gain_soft"]:+.4f} and hard vote {summary["gain_hard"]:+.4f} over the mean member.

![members](members.png)

Export and fuse:

```
{chr(10).join(lines)}
```
"""
    (out / "report.md").write_text(text)
