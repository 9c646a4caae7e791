"""The one exception type the CLIs turn into a one-line message instead of a traceback."""

from __future__ import annotations

import sys
import typing as t


class UserError(Exception):
    """A problem the user can fix: a bad recipe key, a missing folder, an unreadable checkpoint..."""


def one_line(error: BaseException) -> str:
    """The message of a UserError as one `error: ...` line.

    A DataLoader worker re-raises its error in the main process with the worker's traceback prepended
    (`Caught UserError in DataLoader worker process 0 ... UserError: <message>`); the last line, after
    the type name, is the message itself.
    """
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return f"error: {message.split('UserError: ')[-1]}"


def say_error(*lines: str) -> None:
    """Each line as `error: ...` on stderr, flushed: what every refusal to start prints, and nothing else."""
    print("\n".join(f"error: {line}" for line in lines), file=sys.stderr, flush=True)


def exit_with(*lines: str) -> t.NoReturn:
    """Stop a command the way every start-up check and CLI does: `say_error` (no traceback), then exit status 2."""
    say_error(*lines)
    raise SystemExit(2)
