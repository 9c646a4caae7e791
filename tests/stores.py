"""Temporary BentoML model stores for tests: graphs already exported, put into a store with the product's own
`export.store.store_model` and the metadata the graph itself carries, in one subprocess per store (BentoML reads
BENTOML_HOME once per process). Exporting again for each store cost 5-8 s a graph on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

STORE = """
import json, sys
import onnxruntime as ort
from core import metadata
from export.store import store_model
for name, path, changes in json.loads(sys.argv[1]):
    props = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    store_model(path, name, {**metadata.decode(props), **changes})
"""


def model_home(home: Path) -> dict[str, str]:
    """The environment of a process whose model store is `home` (no SERVING_CONFIG from the caller's shell)."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("SERVING_CONFIG", None)
    return env


def store_graphs(env: dict[str, str], *entries: tuple[str, Path] | tuple[str, Path, dict[str, Any]]) -> None:
    """Store each (name, graph) or (name, graph, metadata changes) in env's BENTOML_HOME."""
    rows = [(name, str(path), rest[0] if rest else {}) for name, path, *rest in entries]
    result = subprocess.run([sys.executable, "-c", STORE, json.dumps(rows)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def serving_home(home: Path, serving: str, *entries: tuple[str, Path] | tuple[str, Path, dict[str, Any]]) -> dict:
    """The environment `bentoml serve` runs in for a test: a model store in `home` holding `entries` (as
    `store_graphs`), `serving` as its serving.yaml, and its log at home/serve.log."""
    env = model_home(home)
    store_graphs(env, *entries)
    (home / "serving.yaml").write_text(serving)
    return {**env, "SERVING_CONFIG": str(home / "serving.yaml"), "LOG_PATH": str(home / "serve.log")}
