"""Whether `--out` already holds a run, and the rule for starting one there.

A folder holds a run once an epoch has finished in it (best.pt, last.pt or summary.json, in it or in a
member / seed / iteration sub-folder): starting over there would silently replace a trained model and append
to its train.log, so the commands that train refuse it unless `--resume` (continue it) or `--overwrite`
(delete what the earlier run wrote, then start afresh). A folder holding only config.yaml and train.log is a
run that stopped before its first epoch (a typo in a recipe key, a missing data folder): there is nothing to
lose, so it is cleared and reused without asking.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.errors import UserError

TRAINED = ("best.pt", "last.pt", "summary.json")
# everything fit, distill, self-train and bag write at the top of a run folder
RUN_FILES = (*TRAINED, "config.yaml", "metrics.csv", "curves.png", "train.log", "members.png", "report.md")


def _is_run(folder: Path, files: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in files)


def _nested_runs(folder: Path) -> list[Path]:
    """Sub-folders that are runs of their own: bag's member<i>/, self-train's iter<i>/, fit --runs' seed<N>/."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and _is_run(p, RUN_FILES))


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
    if main_process:
        for sub in _nested_runs(out):
            shutil.rmtree(sub)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for picture in out.glob("confusion_*.png"):  # evaluate's, beside the earlier best.pt
            picture.unlink()
