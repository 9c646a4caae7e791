"""Pictures people would rather see than read: training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy against epoch (and the learning rate) from metrics.csv rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in rows], label="val")
    if any(r.get("ema_val_acc") not in (None, "") for r in rows):
        ax_acc.plot(epochs, [r["ema_val_acc"] for r in rows], label="val (EMA)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_lr.plot(epochs, [r["lr"] for r in rows])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (head)")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    _mark_stages(rows, (ax_loss, ax_acc, ax_lr))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mark_stages(rows: list[dict[str, Any]], axes) -> None:
    """Dotted lines where a progressive-learning stage begins, labelled with its train size."""
    previous = rows[0].get("stage") if rows else None
    for row in rows[1:]:
        if row.get("stage") not in (None, "", previous):
            for ax in axes:
                ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":", linewidth=1)
            axes[0].annotate(
                f"{row['train_size']}px", (row["epoch"] - 0.5, 1), xycoords=("data", "axes fraction"),
                fontsize=8, color="grey", ha="left", va="top",
            )  # fmt: skip
        previous = row.get("stage")


def plot_confusion(confusion: np.ndarray, labels: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalized confusion matrix with counts; large label sets drop the per-cell numbers."""
    n = len(labels)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(max(6, n * 0.5), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_iterations(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Validation and test accuracy per self-training iteration (iteration 0: labelled data only)."""
    x = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["best_val_acc"] for r in rows], marker="o", label="val")
    if all(r.get("test_acc") not in (None, "") for r in rows):
        ax.plot(x, [r["test_acc"] for r in rows], marker="o", label="test")
    ax.set_xticks(x, [f"{r['iteration']}\n{r['arch']}" for r in rows])
    ax.set(xlabel="iteration (0 = labelled only)", ylabel="accuracy", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_members(names: list[str], accuracies: list[float], path: str | Path, title: str = "") -> None:
    """One bar per bagged member and per vote, so the ensemble's gain over its members shows at a glance."""
    fig, ax = plt.subplots(figsize=(max(5, len(names) * 0.9), 4))
    colors = ["tab:blue" if n.startswith("member") else "tab:orange" for n in names]
    ax.bar(names, accuracies, color=colors)
    low = min(accuracies)
    ax.set_ylim(max(0.0, low - (1 - low) * 0.5 - 0.01), min(1.0, max(accuracies) + 0.01))
    for i, a in enumerate(accuracies):
        ax.text(i, a, f"{a:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="accuracy", title=title)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
