"""At most PER_MINUTE WARNING lines a minute from the multipart parser, which writes one for each malformed body a
client sends it: no client can flood the log with them (issue 31: about 2,000 in an attack run).

    log_limit.install()   # once per process is enough; service/http/app.py calls it for each app it builds

Starlette's streaming form parser (service/http/forms.py: a multipart body without a length or over
WHOLE_BODY_BYTES, and every URL-encoded body) is python-multipart's, whose logger `python_multipart.multipart`
(python-multipart 0.0.34, starlette 1.10) writes a WARNING such as "Expected boundary character 45, got 103 at index 2"
for each malformed body, beside the INFO line of its refusal (service/http/app.py, `refused`), which names the
problem already. The service's own parser, for whole bodies, logs nothing. A filter on that logger lets PER_MINUTE
through in each minute, says once when it starts holding the rest back, and with the first line of a later minute
says how many it held back. tests/test_app.py sends malformed bodies and counts the lines, so a renamed logger fails
it.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

PARSER_LOGGER = "python_multipart.multipart"
# enough to see what kind of malformed bodies arrive; the rest only add their number
PER_MINUTE = 10
WINDOW_S = 60.0

logger = logging.getLogger("service")


class AtMost(logging.Filter):
    """Lets through at most `per_minute` records of WARNING or above of the logger it is added to (`source`) in each
    minute; lower levels pass. The lines about those held back are written to the "service" logger."""

    def __init__(self, source: str, per_minute: int = PER_MINUTE, clock: t.Callable[[], float] = time.monotonic):
        super().__init__()
        self.source, self.per_minute, self.clock = source, per_minute, clock
        self.started, self.passed, self.held = clock(), 0, 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self.lock:
            now, held_before = self.clock(), 0
            if now - self.started >= WINDOW_S:
                held_before, self.started, self.passed, self.held = self.held, now, 0, 0
            self.passed += 1
            passes = self.passed <= self.per_minute
            self.held += not passes
            starts_holding = self.passed == self.per_minute + 1
        if held_before:
            logger.warning("%s: %d more WARNING lines held back in the minute before", self.source, held_before)
        if starts_holding:
            logger.warning("%s logged %d WARNING lines this minute (malformed bodies from clients); the rest of this "
                           "minute's are counted, not logged", self.source, self.per_minute)  # fmt: skip
        return passes


def install() -> None:
    """Adds the filter to the parser's logger, unless it has one."""
    source = logging.getLogger(PARSER_LOGGER)
    if not any(isinstance(f, AtMost) for f in source.filters):
        source.addFilter(AtMost(PARSER_LOGGER))
