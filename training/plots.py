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
