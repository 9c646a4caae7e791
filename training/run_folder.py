"""Whether `--out` already holds a run, and the rule for starting one there.

A folder holds a run once an epoch has finished in it (best.pt, last.pt or summary.json, in it or in a
member / seed / iteration sub-folder): starting over there would silently replace a trained model and append
to its train.log, so the commands that train refuse it unless `--resume` (continue it) or `--overwrite`
(delete what the earlier run wrote, then start afresh). A folder holding only config.yaml and train.log is a
run that stopped before its first epoch (a typo in a recipe key, a missing data folder): there is nothing to
lose, so it is cleared and reused without asking.

Clearing is undone by a refusal: `claim` moves the earlier run's files into `REPLACED` inside --out, the new run
deletes them once it has passed every check and writes its first file (`started`), and a refusal before that puts
them back (`put_back`). So a run refused late (a weights file missing, fp16 without CUDA) leaves --out as it was,
as one refused by a recipe's typo does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.errors import UserError

TRAINED = ("best.pt", "last.pt", "summary.json")
# everything fit, distill, self-train and bag write at the top of a run folder
RUN_FILES = (*TRAINED, "config.yaml", "metrics.csv", "curves.png", "train.log", "members.png", "report.md")
REPLACED = ".replaced-run"  # the earlier run's files, kept until the new run starts
_pending: Path | None = None  # this process's REPLACED folder, until `started` or `put_back`


def _is_run(folder: Path, files: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in files)


def _nested_runs(folder: Path) -> list[Path]:
    """Sub-folders that are runs of their own: bag's member<i>/, self-train's iter<i>/, fit --runs' seed<N>/."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != REPLACED and _is_run(p, RUN_FILES))


def trained_files(folder: Path) -> list[Path]:
    """The files that show a run finished an epoch in `folder` (empty when it holds no trained run)."""
    if not folder.is_dir():
        return []
    found = [folder / name for name in TRAINED if (folder / name).is_file()]
    for sub in _nested_runs(folder):
        found += [sub / name for name in TRAINED if (sub / name).is_file()]
    return found


def claim(out: str | Path, resume: bool, overwrite: bool, main_process: bool = True) -> None:
    """Make `out` ready for a new run, or refuse with one line; `resume` leaves it as it is (and wins over
    `overwrite`: the CLI refuses the two together).

    Only the main process clears files (under torchrun every rank checks, so all refuse alike).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the run")
    if resume or not out.is_dir():
        return
    trained = trained_files(out)
    if trained and not overwrite:
        shown = ", ".join(str(p.relative_to(out)) for p in trained[:3])
        raise UserError(
            f"{out} already holds a run ({shown}); pass --resume to continue it, --overwrite to replace it, "
            "or another --out"
        )
    if not main_process:
        return
    earlier = [*_nested_runs(out), *(out / name for name in RUN_FILES if (out / name).is_file())]
    earlier += sorted(out.glob("confusion_*.png"))  # evaluate's, beside the earlier best.pt
    if not earlier:
        return
    global _pending
    _pending = out / REPLACED
    shutil.rmtree(_pending, ignore_errors=True)  # one a killed process left: a run already replaced once
    _pending.mkdir()
    for path in earlier:
        path.rename(_pending / path.name)


def started() -> None:
    """The new run passed its checks and writes now: the run it replaces is deleted."""
    global _pending
    if _pending is not None:
        shutil.rmtree(_pending, ignore_errors=True)
        _pending = None


def put_back() -> None:
    """The new run was refused before it started: the earlier run's files go back where they were."""
    global _pending
    if _pending is None:
        return
    for path in _pending.iterdir():
        path.rename(_pending.parent / path.name)
    _pending.rmdir()
    _pending = None
