"""Which `--out` folders hold a run (training/run_folder.py): real folders in a temporary directory, the file names
from docs/contract.md ('Training CLI'). The refusal through each command: tests/test_photos.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UserError
from training.run_folder import REPLACED, claim, put_back, started


def unfinished(out: Path) -> None:
    """What a run leaves when it stops before its first epoch ends (a typo in a recipe key, a missing data folder)."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("model: {arch: resnet18}\n")
    (out / "train.log").write_text("train: 6 images\n")


def test_a_folder_where_a_run_stopped_before_its_first_epoch_is_reused(tmp_path):
    out = tmp_path / "run"
    unfinished(out)
    unfinished(out / "seed1")  # fit --runs: a seed that stopped as early
    (out / "notes.txt").write_text("mine")
    claim(out, resume=False, overwrite=False)  # no --resume, no --overwrite: not refused
    # the stopped run's files are set aside, the user's kept; deleted once the new run starts
    assert sorted(p.name for p in out.iterdir()) == [REPLACED, "notes.txt"]
    started()
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_puts_the_earlier_run_back_when_the_new_one_is_refused(tmp_path):
    out = tmp_path / "run"
    unfinished(out)
    unfinished(out / "seed1")
    (out / "seed1" / "last.pt").write_bytes(b"weights")
    (out / "confusion_test.png").write_bytes(b"picture")
    (out / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    claim(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [REPLACED, "notes.txt"]
    put_back()  # what the CLI does with a refusal before the run starts
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "seed1" / "last.pt").read_bytes() == b"weights"
    put_back()  # nothing pending: nothing moves
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


@pytest.mark.parametrize("trained", ["best.pt", "last.pt", "summary.json", "seed1/last.pt"])
def test_a_folder_where_an_epoch_finished_holds_a_run(tmp_path, trained):
    out = tmp_path / "run"
    unfinished(out)
    (out / trained).parent.mkdir(exist_ok=True)
    (out / trained).write_bytes(b"weights")
    with pytest.raises(UserError, match=f"already holds a run \\({trained}\\); pass --resume"):
        claim(out, resume=False, overwrite=False)
    assert (out / trained).read_bytes() == b"weights" and (out / "train.log").read_text() == "train: 6 images\n"
