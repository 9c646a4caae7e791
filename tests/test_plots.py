"""curves.png: progressive-learning stage boundaries are marked where the stage changes, and nowhere else."""

from __future__ import annotations

import matplotlib.pyplot as plt

from training.plots import _mark_stages


def _row(epoch: int, stage: int | str, size: int) -> dict:
    return {"epoch": epoch, "stage": stage, "train_size": size}


def test_each_stage_boundary_gets_a_line_on_every_panel_and_its_size_once():
    rows = [_row(1, 1, 16), _row(2, 1, 16), _row(3, 2, 24), _row(4, 2, 24), _row(5, 3, 32)]
    fig, axes = plt.subplots(1, 3)
    try:
        _mark_stages(rows, axes)
        for ax in axes:  # a dotted line half-way before the first epoch of each new stage
            assert [tuple(line.get_xdata()) for line in ax.lines] == [(2.5, 2.5), (4.5, 4.5)]
        assert [t.get_text() for t in axes[0].texts] == ["24px", "32px"] and not axes[1].texts
    finally:
        plt.close(fig)


def test_a_run_without_stages_gets_no_marks():
    fig, axes = plt.subplots(1, 3)
    try:
        _mark_stages([_row(1, "", 32), _row(2, "", 32)], axes)
        assert not any(ax.lines or ax.texts for ax in axes)
    finally:
        plt.close(fig)
