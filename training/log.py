"""What a training run reports: one `logging` logger, shown on the console and kept in the run folder.

Every line goes to the console (stdout; warnings to stderr) through `tqdm.write`, so a progress bar on the
terminal is redrawn below it instead of being torn, and to `train.log` of each run folder it happens in
(a bagging or self-training folder keeps its members' lines too). Progress bars draw only when stderr is a
terminal: tqdm redraws a bar with carriage returns, which fill a redirected log with thousands of frames,
so a redirected run shows one line an epoch instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

logger = logging.getLogger("training")
F = TypeVar("F", bound=Callable[..., Any])
LOG_FILE = "train.log"


class _Console(logging.Handler):
    """tqdm.write to whatever sys.stdout / sys.stderr is at the time (pytest's capture swaps them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own rule: a failing handler must not stop the program
            self.handleError(record)


class _RunFile(logging.FileHandler):
    """Opened at the first line, so a command that fails before it reports anything leaves no folder behind."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(message)s"))

    def _open(self):  # noqa: ANN202 - logging's own hook
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def is_main_process() -> bool:
    """Rank 0 under torchrun, or the only process: the one that logs to the run folder and writes it."""
    return int(os.environ.get("RANK", "0")) == 0


def _console() -> None:
    # logging.config.dictConfig(disable_existing_loggers=True), which BentoML's CLI module runs when it is
    # imported (bentoml_cli.cli), disables every logger made before it, this one included: a run in the same
    # process would then log nothing and write no train.log
    logger.disabled = False
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the console handler already shows it; a root handler would print it twice


def info(message: str) -> None:
    _console()
    logger.info(message)


def warning(message: str) -> None:
    _console()
    logger.warning(message)


@contextmanager
def run_log(folder: str | Path | None, enabled: bool = True) -> Iterator[None]:
    """Append every line logged inside the block to `folder/train.log` (`enabled`: only the main process)."""
    if folder is None or not enabled:
        yield
        return
    _console()
    path = (Path(folder) / LOG_FILE).resolve()
    if any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        yield  # an enclosing block writes this file already (the CLI around `fit` on the same folder)
        return
    handler = _RunFile(path)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def to_run_folder(run: F) -> F:
    """For `run(config, out_dir, ...)`: what it logs also goes to out_dir/train.log (on the main process)."""

    @functools.wraps(run)
    def logged(config: dict[str, Any], out_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        with run_log(out_dir, enabled=is_main_process()):
            return run(config, out_dir, *args, **kwargs)

    return logged  # type: ignore[return-value]


def bars_on(show: bool) -> bool:
    """Whether to draw progress bars: asked for, and stderr (where tqdm draws) is a terminal."""
    return show and sys.stderr.isatty()
