"""Every graph a serving config names, opened and run once the way a worker will, before any worker starts.

    python -m service.preflight cpu '{"digits-resnet18:abc": "/path/to/model.onnx"}'   # one line per problem

`bentoml serve` imports the service, then starts its workers, and BentoML restarts a worker that fails to start
for ever (measured: a corrupt graph, 18 start attempts and 108 tracebacks in 180 s, never serving). So the
process that imports the service checks, before that, what a worker would fail on: each graph opens as an ONNX
Runtime session on the configured device (`service.runtime.Graph`, the workers' own code: a corrupt or truncated
file, an operator ONNX Runtime lacks, `device: cuda` without a usable GPU, where ONNX Runtime falls back to the CPU
silently), carries this project's metadata in a format this code reads, and classifies one black image into as
many probabilities as it has labels.

The check runs in a child process, so the sessions (about 100 MB and 1 s for a ResNet-50 on the CPU; on a GPU, a
CUDA context of a few hundred MB) are released when it ends instead of staying in the `bentoml serve` process,
which lives as long as the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import numpy as np

TIMEOUT_S = 600  # a few ResNet-50 sessions take seconds; a graph that hangs ONNX Runtime must not hang start-up


def problem(path: Path, device: str) -> str | None:
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


def problems(graphs: dict[str, str], device: str) -> dict[str, t.Any]:
    """{"device": why `device` cannot run here or None, "graphs": {tag: `problem`}}, found in a child process,
    whose sessions end with it."""
    # this process's import path, so the child imports this same code (a Bento's src/, a checkout's root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)}
    command = [sys.executable, "-m", "service.preflight", device, json.dumps(graphs)]
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"device": None, "graphs": {tag: f"opening its graph took over {TIMEOUT_S} s" for tag in graphs}}
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
            why = problem(Path(path), device)
        except DeviceError as e:
            found["device"] = _one_line(e)
            break
        if why is not None:
            found["graphs"][tag] = why
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1:])
