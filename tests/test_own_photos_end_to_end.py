"""A user's own photos to a deployed classifier, with the README's own commands.

The block under README.md's `<!-- own-photos ... -->` marker runs as it stands, in bash, with only its places
moved: `data/photos`, `runs/photos`, `photos.yaml` and `labels.csv` into a temporary folder, port 3000 to a free
port, and a temporary model store (BENTOML_HOME). So a change that breaks the README's path - the photos set,
the recipe, fit's checks, export --store without --out, `make bento` of another serving config, the Bento
serving that config, service.predict - fails here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

MARKER = "<!-- own-photos: tests/test_own_photos_end_to_end.py runs this block -->"


def readme_commands() -> list[str]:
    """The commands of the README's own-photos block, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(MARKER) :]
    block = block[block.index("```bash\n") + len("```bash\n") :]
    block = block[: block.index("```")]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def moved(command: str, tmp: Path, port: int) -> str:
    for place in ("data/photos", "runs/photos", "labels.csv"):
        command = re.sub(rf"(?<![\w/]){re.escape(place)}", str(tmp / place), command)
    # the venv running these tests stands for the checkout's .venv
    command = command.replace("source .venv/bin/activate", f"source {Path(sys.executable).parent / 'activate'}")
    return command.replace("3000", str(port))


def fresh_shell() -> dict[str, str]:
    """The environment of a new shell: no venv on PATH, no VIRTUAL_ENV, no SERVING_CONFIG."""
    venv = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != venv and not p.startswith(f"{venv}{os.sep}")]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SERVING_CONFIG", "PYTHONPATH")}
    return {**env, "PATH": os.pathsep.join(path)}


def bash(script: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_readme_path_from_own_photos_to_a_served_bento(tmp_path):
    from tests.test_service import free_port

    commands = readme_commands()
    # a new shell: the block activates the venv itself, and the steps after the server are run in one more
    activate, commands = commands[0], commands[1:]
    assert activate.startswith("source .venv/bin/activate"), activate
    # joined with `&&` below, where the line's own comment would hide the command after it
    activate = activate.split("#", 1)[0].strip()
    [serve] = [i for i, c in enumerate(commands) if c.startswith("bentoml serve")]
    port = free_port()
    before, serve_line, after = [activate, *commands[:serve]], commands[serve], commands[serve + 1 :]
    assert [c.split()[0] for c in after] == ["curl", "python"], after
    after = [f"{activate} && {after[0]}", f"{activate} && {after[1]}"]
    serve_line = f"{activate} && exec {serve_line}"
    env = {
        **fresh_shell(),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    # `export --store photos` writes models/photos.onnx in the checkout, as the README says: a file a user has
    # there is put back afterwards
    onnx_file = ROOT / "models" / "photos.onnx"
    kept = onnx_file.read_bytes() if onnx_file.is_file() else None
    try:
        _walk(before, after, serve_line, env, tmp_path, port)
    finally:
        if kept is not None:
            onnx_file.write_bytes(kept)
        else:
            onnx_file.unlink(missing_ok=True)


def _walk(before: list[str], after: list[str], serve_line: str, env: dict, tmp_path: Path, port: int) -> None:
    built = bash("\n".join(moved(c, tmp_path, port) for c in before), env)

    # fit said what it found and what it trains, before the first epoch, on screen and in its log
    found = "train: 240 images, 6 of 6 classes (astronaut, cat, coffee, flower, rocket, ...), 40-40 images a class"
    log = (tmp_path / "runs/photos/train.log").read_text()
    assert found in built.stdout and found in log
    assert "input: 128 px crops of images resized to 146 px (bilinear); model resnet18, device" in log
    assert log.index(found) < log.index("epoch 1/8")
    # evaluate printed its JSON: the recipe learned the held-out photos (chance is 1/6; seed 0 reaches 0.95 on a
    # CPU: 0.7 leaves room for other kernels' rounding)
    evaluated = json.loads(next(line for line in built.stdout.splitlines() if line.startswith('{"acc"')))
    assert evaluated["n"] == 60 and evaluated["acc"] >= 0.7, evaluated

    from tests.test_service import running

    url = f"http://127.0.0.1:{port}"
    serve = ["bash", "-c", moved(serve_line, tmp_path, port)]
    with running(serve, env, tmp_path / "serve.log", url) as server:
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]

        # the Bento serves photos.yaml's one model, whatever the checkout's serving.yaml names
        models = httpx.post(f"{url}/models", json={}, timeout=30).json()
        assert list(models["models"]) == ["photos"] and models["default_model"] == "photos", models
        assert models["models"]["photos"]["labels"] == ["astronaut", "cat", "coffee", "flower", "rocket", "temple"]

        curl, predict = (moved(c, tmp_path, port) for c in after)
        [answer] = json.loads(bash(curl, env).stdout)
        assert answer["model"] == "photos" and answer["label"] == "cat", answer

        # every held-out photo, without the server: the served answer for the same file, and the test accuracy
        # evaluate reported
        bash(predict, env)
        rows = list(csv.DictReader((tmp_path / "labels.csv").read_text().splitlines()))
        assert len(rows) == 60 and not any(r["error"] for r in rows)
        right = sum(Path(r["path"]).parent.name == r["label"] for r in rows)
        assert right == round(evaluated["acc"] * 60), (right, evaluated["acc"])
        [cat] = [r for r in rows if Path(r["path"]) == tmp_path / "data/photos/test/cat/0.jpg"]
        assert cat["label"] == answer["label"]
        assert abs(float(cat["probability"]) - answer["probability"]) <= 1e-6
