"""A client's value, as an error message quotes it: never more than a short prefix of what was sent.

An error that echoed a value whole let a client make the answer and the log line as large as its request (a
900 KB `model` field came back in a 900,070-byte 404 body). `quoted` is used wherever a message names something
a client sent: a model or ensemble name, a voting rule, a field name or value, a content type.
"""

from __future__ import annotations

import typing as t

LIMIT = 64  # characters of a value kept: enough to recognise a misspelt name


def quoted(value: t.Any, limit: int = LIMIT) -> str:
    """repr(value) (so a newline in it cannot start a log line of its own), cut to `limit` characters and
    marked as cut: 'digits-resnet1' stays as it is; a 900,000-character name becomes 'xxxx...' (900002 characters)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def listed(values: t.Iterable[t.Any], most: int = 5) -> str:
    """The first `most` values, `quoted` and joined, and how many more there were."""
    values = list(values)
    shown = ", ".join(quoted(v) for v in values[:most])
    return shown if len(values) <= most else f"{shown} and {len(values) - most} more"
