"""Every workaround of BentoML (and uvicorn) behaviour in one list, `WORKAROUNDS`, and the guards they share.

Each workaround lives in a module of its own, whose docstring says what BentoML does, why that is wrong for
this service, which version it was checked against and when it can go. Most rely on details of bentoml 1.4
that are not public API and may change in any release, so each module has a guard: a `check()` that tries
the exact behaviour it relies on against the installed bentoml, run through `guard()` when the module is
imported (at start-up): on a mismatch the service stops with one line naming the module, what changed and
the bentoml version, instead of serving with a patch that silently does something else.
tests/test_workarounds.py checks that every module touching a private BentoML, uvicorn or circus name is here.
"""

from __future__ import annotations

import functools
import typing as t
from dataclasses import dataclass
from importlib import metadata

from core.errors import exit_with

# the version every patch was written and checked against
CHECKED_ON = "1.4.40"


@dataclass(frozen=True)
class Workaround:
    module: str  # the file that holds it
    concern: str  # what BentoML (or uvicorn) does that this service does otherwise
    guard: str  # the module's function that checks, at start-up, the internals it relies on ("": it relies on none)


WORKAROUNDS = (
    # each one line on why the public API cannot do it
    Workaround("service/timeout.py", "BentoML's request timer outlives its request (no setting cancels it)", "check"),
    Workaround("service/connections.py", "uvicorn: no header timeout, no httptools head bound, no drain", "check"),
    Workaround("service/packed.py", "a Bento argument holding the config can only be set privately", "check"),
    Workaround("service/stored.py", "BentoML restarts a worker that cannot start for ever", "check"),
    Workaround("service/gpus.py", "BentoML gives every worker the same GPU", "check"),
)


class PatchMismatch(RuntimeError):
    """The installed bentoml no longer has the shape a patch relies on."""


def bentoml_version() -> str:
    return metadata.version("bentoml")


def mismatch(patch: str, what: str) -> PatchMismatch:
    """The one-line error for `patch`; `what` (an exception's text, say) is folded onto that line."""
    what = "; ".join(line.strip() for line in what.splitlines() if line.strip())
    return PatchMismatch(
        f"{patch} relies on bentoml internals that bentoml {bentoml_version()} does not have: {what} "
        f"(written for bentoml {CHECKED_ON}; see the comments in {patch})"
    )


def checks(patch: str) -> t.Callable[[t.Callable[[], None]], t.Callable[[], None]]:
    """Decorate a patch's check: any exception in it (an internal moved, renamed, or takes other
    arguments) becomes a PatchMismatch that names the patch and the bentoml version."""

    def decorate(check: t.Callable[[], None]) -> t.Callable[[], None]:
        @functools.wraps(check)
        def checked() -> None:
            try:
                check()
            except PatchMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - whatever broke, the patch no longer fits
                raise mismatch(patch, f"{type(e).__name__}: {e}") from e

        return checked

    return decorate


def guard(check: t.Callable[[], None]) -> None:
    """Run a check at start-up; on a mismatch print one line and exit with status 2, as a bad serving.yaml does."""
    try:
        check()
    except PatchMismatch as e:
        exit_with(str(e))
