"""The model-store entries a serving config names, checked before the service starts.

`bentoml serve` and `bentoml build` import service/service.py first; there each model the config names must
be in the model store, and the members of each ensemble must agree on what the service decodes once for all
of them (the input size and resize) and on what their outputs mean (the labels, in order). A mistake stops
the command with one line on stderr and exit status 2, in the process that imports the service, before any
worker starts: a worker that failed instead would be restarted by BentoML over and over, and an ensemble of
mismatched members would answer with a 500 or, worse, with the wrong labels.

Each graph is also opened and run once the way a worker will (`graph_problems`): as an ONNX Runtime session on
the configured device (`service.runtime.Graph`, the workers' own code: a corrupt or truncated file, an operator
ONNX Runtime lacks, `device: cuda` without a usable GPU, where ONNX Runtime falls back to the CPU silently),
with this project's metadata in a format this code reads, classifying one black image into as many
probabilities as it has labels (a corrupt graph used to restart its worker again and again, a traceback each
time). That runs in a child process, so the sessions are released when it ends instead of staying in the
`bentoml serve` process for the life of the server; the child's time, most of it its start and imports, is paid
once at start-up (measured: docs/serving.md, 'Serving'):

    python -m service.stored cpu '{"digits-resnet18:abc": "/path/to/model.onnx"}'   # {"device", "graphs"} as JSON

A worker whose start-up fails even so stops the whole server (`install`, `give_up`; exit status 2), instead of
being restarted for ever. BentoML 1.4 runs each worker under a circus watcher (_bentoml_impl/server/serving.py,
`create_watcher` in bentoml/serving.py) with `respawn=True` outside a container: circus 0.18 starts a new worker
whenever one exits, whatever its exit status (circus/watcher.py: `reap_process` only reports the status,
`manage_processes` respawns), and has no setting for "give up after N failures" (`max_retry` counts failed
spawns, not a process that starts and then exits). In a container (`BENTOML_CONTAINERIZED`) `respawn` is False,
and the arbiter stops once no worker is left, with a traceback. So no exit status or setting stops the arbiter,
and the service stops it itself: the `bentoml serve` process (the arbiter, every worker's parent) installs a
SIGUSR1 handler, which circus leaves alone (circus/sighandler.py handles HUP, QUIT, INT, TERM and WINCH), and a
worker whose start-up failed signals it after printing one line; the handler asks circus to stop as SIGTERM does
(every worker stopped gracefully), and the process then exits with status 2. It is the net for what the checks
cannot see (a GPU that disappears between the two, memory that runs out), and can go when BentoML stops a server
whose workers cannot start. The model store's path (`store_path`) is read from BentoML's private container:
BentoML's public API names no store path.

Checked against bentoml 1.4.40 and circus 0.18.3. Guard: `check()` (at import, service/patches.py) requires that
circus still leave SIGUSR1 alone and that BentoML's container still hold the model store with its path.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import subprocess
import sys
import typing as t
from pathlib import Path
from typing import Any

import numpy as np

from core import metadata
from core.errors import exit_with, say_error
from service import patches
from service.config import ServingConfig, model_name

GRAPHS_TIMEOUT_S = 600  # a few ResNet-50 sessions take seconds; a graph that hangs ONNX Runtime must not hang start-up
SERVER_PID = "IMGCLF_SERVER_PID"  # set by `install` in the server; its workers inherit it (circus copies os.environ)


class StartUpError(Exception):
    """A config the model store cannot serve."""


def store_path() -> str:
    """The model store in use: $BENTOML_HOME/models, ~/bentoml/models, or a served Bento's own models/."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.model_store.get()._path)


def entries(tags: list[str]) -> dict[str, Any]:
    """The stored model of each tag, by name; a missing one is one line naming the tag, the store and the fix."""
    import bentoml
    from bentoml.exceptions import NotFound

    found = {}
    for tag in tags:
        try:
            found[model_name(tag)] = bentoml.models.get(tag)
        except NotFound:
            raise StartUpError(
                f"Model {tag} could not be found locally: the model store {store_path()} has no {tag} "
                f"(`bentoml models list` shows what it has; python -m export CKPT --store {model_name(tag)} "
                "adds one, and BENTOML_HOME chooses another store)"
            ) from None
    return found


def check_ensembles(config: ServingConfig, metadata_of: dict[str, dict[str, Any]]) -> None:
    """Every member of an ensemble has the first member's labels (in order), crop and resize."""
    for name, ensemble in config.ensembles.items():
        first = ensemble.members[0]
        for member in ensemble.members[1:]:
            why = metadata.member_mismatch(first, metadata_of[first], member, metadata_of[member])
            if why is not None:
                raise StartUpError(f"ensembles.{name}: {why}")


def check_metadata(found: dict[str, Any]) -> None:
    """Every entry's metadata has the keys the service reads (an entry `python -m export --store` did not make
    may lack them)."""
    for model in found.values():
        missing = [k for k in metadata.REQUIRED if k not in model.info.metadata]
        if missing:
            raise StartUpError(
                f"model '{model.tag}' cannot be served: its model-store entry's metadata lacks {', '.join(missing)} "
                f"(not stored by this project): store it with python -m export CKPT --store {model.tag.name}"
            )


def graph_problems(found: dict[str, Any], device: str) -> list[str]:
    """One line for each model whose graph a worker could not serve on `device`, or one line for a device that
    cannot run here."""
    graphs = {str(model.tag): model.path_of(metadata.MODEL_FILE) for model in found.values()}
    found_problems = checked_in_a_child(graphs, device)
    if found_problems["device"] is not None:
        return [
            f"{found_problems['device']}: serve with device: auto or cpu in the serving config, or on a machine "
            "where ONNX Runtime can use the GPU (onnxruntime-gpu, the NVIDIA driver, a visible device)"
        ]
    return [
        f"model '{tag}' cannot be served: {why}; export it again (python -m export CKPT --store "
        f"{model_name(tag)}), or take it out of the serving config"
        for tag, why in found_problems["graphs"].items()
    ]


def load_or_exit(config: ServingConfig, device: str) -> dict[str, Any]:
    """`entries` of the config's models after `check_metadata`, `check_ensembles` and `graph_problems` on
    `device`, or one line on stderr per problem and exit status 2."""
    try:
        found = entries(config.models)
        check_metadata(found)
        check_ensembles(config, {name: model.info.metadata for name, model in found.items()})
    except StartUpError as e:
        exit_with(str(e))
    lines = graph_problems(found, device)
    if lines:
        exit_with(*lines)
    return found


def graph_problem(path: Path, device: str) -> str | None:
    """Why a worker could not serve the graph at `path` on `device`, in one line, or None. A device that cannot
    run here raises DeviceError: that is no fault of the graph's."""
    from core.devices import DeviceError
    from service.runtime import Graph

    if not path.is_file():
        return f"its graph {path} is missing from the model store"
    try:
        graph = Graph(path, device)
    except DeviceError:
        raise
    except ValueError as e:  # core.metadata.decode: no metadata, or a newer format
        return f"{path}: {e}"
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors have no common type; each is reported
        return f"ONNX Runtime cannot open {path}: {_one_line(e)}"
    crop = graph.input_shape[0]
    try:
        probabilities = graph.run(np.zeros((1, crop, crop, 3), np.uint8))["probabilities"]
    except Exception as e:  # noqa: BLE001
        return f"{path} cannot classify a {crop}x{crop} image: {_one_line(e)}"
    classes = len(graph.meta["labels"])
    if probabilities.shape != (1, classes):
        return f"{path} answers {list(probabilities.shape)} for one image, not [1, {classes}] (one per label)"
    return None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def checked_in_a_child(graphs: dict[str, str], device: str) -> dict[str, t.Any]:
    """{"device": why `device` cannot run here or None, "graphs": {tag: `graph_problem`}}, found in a child process,
    whose sessions end with it."""
    # this process's import path, so the child imports this same code (a Bento's src/, a checkout's root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)}
    command = [sys.executable, "-m", "service.stored", device, json.dumps(graphs)]
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=GRAPHS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"device": None, "graphs": {tag: f"opening its graph took over {GRAPHS_TIMEOUT_S} s" for tag in graphs}}
    if child.returncode != 0:  # the check itself failed (ONNX Runtime crashed the process, say)
        why = " ".join(child.stderr.strip().splitlines()[-1:]) or f"exit status {child.returncode}"
        failed = {tag: f"checking its graph {path} failed: {why}" for tag, path in graphs.items()}
        return {"device": None, "graphs": failed}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    from core.devices import DeviceError

    device, graphs = argv[0], json.loads(argv[1])
    found: dict[str, t.Any] = {"device": None, "graphs": {}}
    for tag, path in graphs.items():
        try:
            why = graph_problem(Path(path), device)
        except DeviceError as e:
            found["device"] = _one_line(e)
            break
        if why is not None:
            found["graphs"][tag] = why
    print(json.dumps(found))


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
    say_error(f"a worker cannot start, so the server stops (BentoML would restart it for ever): {_one_line(error)}")
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


@patches.checks("service/stored.py")
def check() -> None:
    """circus handles no SIGUSR1 (the signal `install` takes), and BentoML's container has the model store."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from circus.sighandler import SysHandler

    if signal.SIGUSR1 in SysHandler.SIGNALS:
        raise patches.mismatch("service/stored.py", "circus now handles SIGUSR1 itself")
    if not callable(getattr(BentoMLContainer.model_store, "get", None)):
        raise patches.mismatch("service/stored.py", "BentoMLContainer has no model_store provider")


patches.guard(check)


if __name__ == "__main__":
    main(sys.argv[1:])
