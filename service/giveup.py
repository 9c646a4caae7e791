"""A worker that cannot start stops the whole server (exit status 2) instead of being restarted for ever.

BentoML 1.4 runs each worker under a circus watcher (_bentoml_impl/server/serving.py, `create_watcher` in
bentoml/serving.py) with `respawn=True` outside a container: circus (0.18) starts a new worker whenever one
exits, whatever its exit status (circus/watcher.py, `reap_process` only reports the status, `manage_processes`
respawns), and has no setting for "give up after N failures" (`max_retry` counts failed spawns of the process,
not a process that starts and then exits). In a container (`BENTOML_CONTAINERIZED`) `respawn` is False, and the
arbiter stops once no worker is left, with a traceback. So no exit status or setting stops the arbiter, and the
service stops it itself: the `bentoml serve` process (the arbiter, every worker's parent) `install`s a SIGUSR1
handler, which circus leaves alone (circus/sighandler.py handles HUP, QUIT, INT, TERM and WINCH), and a worker
whose start-up failed signals it (`give_up`) after printing one line. The handler asks circus to stop as SIGTERM
does (every worker stopped gracefully), and the process then exits with status 2.

service/preflight.py catches what it can before any worker starts; this is the net for the rest (a GPU that
disappears between the two, memory that runs out). It can go when BentoML stops a server whose workers cannot
start.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import sys
import typing as t

SERVER_PID = "IMGCLF_SERVER_PID"  # set by `install` in the server; its workers inherit it (circus copies os.environ)
_gave_up = False


def install() -> None:
    """In the `bentoml serve` process, before its workers start: a worker's `give_up` stops the server."""
    os.environ[SERVER_PID] = str(os.getpid())
    signal.signal(signal.SIGUSR1, _worker_gave_up)
    # registered now, so that it runs after the exit handlers BentoML registers later (atexit runs them in
    # reverse); the status of a server that stopped because a worker could not start is 2, not click's 0
    atexit.register(_exit_status)


def _worker_gave_up(signum: int, frame: t.Any) -> None:
    global _gave_up
    if not _gave_up:
        _gave_up = True
        os.kill(os.getpid(), signal.SIGTERM)  # circus's own handler: stop every worker, then `bentoml serve` returns


def _exit_status() -> None:
    if _gave_up:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)


def give_up(error: BaseException) -> None:
    """In a worker whose start-up failed: one line on stderr, the server told to stop, and exit status 2. Returns
    (the caller re-raises) in a process no `install`ed server started."""
    server = os.environ.get(SERVER_PID)
    if server is None or server != str(os.getppid()):
        return
    print(f"error: a worker cannot start, so the server stops (BentoML would restart it for ever): "
          f"{' '.join(str(error).split())}", file=sys.stderr)  # fmt: skip
    sys.stderr.flush()
    os.kill(int(server), signal.SIGUSR1)
    os._exit(2)  # BentoML would log the exception again, with its traceback, before exiting


def on_failure(start: t.Callable[..., None]) -> t.Callable[..., None]:
    """Decorate a service's __init__: an exception in it is `give_up`."""

    @functools.wraps(start)
    def started(*args: t.Any, **kwargs: t.Any) -> None:
        try:
            start(*args, **kwargs)
        except Exception as e:
            give_up(e)
            raise

    return started
