"""Guards for the service's reliance on private BentoML internals (service/timeout.py, service/upload.py).

Both depend on details of bentoml 1.4 that are not public API and may change in any release. Each
module has a `check()` that tries the exact behaviour it relies on against the installed bentoml, and
runs it through `guard()` at start-up: on a mismatch the service stops with one line naming the patch,
what changed and the bentoml version, instead of serving with a patch that silently does something else.
"""

from __future__ import annotations

import functools
import sys
import typing as t
from importlib import metadata

# the version every patch was written and checked against
CHECKED_ON = "1.4.40"


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
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
