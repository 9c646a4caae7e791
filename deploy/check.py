"""Run a built image and check it serves what training measured: `make container-check` (README, "Container").

    python -m deploy.check [--image classifier:cpu] [--variant cpu|gpu]
                           [--checkpoint runs/digits-resnet18/best.pt] [--data data/digits]

The container runs on the host network and every request goes to 127.0.0.1. The model is the one packed
in the image's Bento (nothing is mounted); its source checksum must be the checkpoint's, so the accuracy
compared is that of one model. Exits non-zero, saying which check failed, and always removes the container.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from core import metadata
from core.errors import say_error

ROOT = Path(__file__).resolve().parents[1]

# run inside the image: which model files the Bento carries, with the checkpoint checksum each came from
MODELS_IN_IMAGE = """
import json, os, pathlib, yaml
found = {}
for f in pathlib.Path(os.environ["BENTO_PATH"]).glob("models/*/*/model.yaml"):
    info = yaml.safe_load(f.read_text())
    found[info["name"] + ":" + info["version"]] = info.get("metadata", {}).get("source_sha256")
print(json.dumps(found))
"""
# run inside the image: the CUDA and cuDNN libraries of the nvidia wheels, and whether the loader resolves every
# library onnxruntime's CUDA provider links (libcuda.so.1 excepted: `docker run --gpus` mounts the host driver's)
GPU_LIBRARIES = """
import json, os, pathlib, subprocess, onnxruntime
site = pathlib.Path(onnxruntime.__file__).parents[1]
libs = sorted(str(p.relative_to(site)) for p in (site / "nvidia").glob("*/lib/lib*.so*"))
provider = pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
ldd = subprocess.run(["ldd", str(provider)], capture_output=True, text=True).stdout
missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
print(json.dumps({"libraries": libs, "unresolved": missing, "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH")}))
"""
WANTED_GPU_LIBRARIES = ("libcudart.so", "libcublas.so", "libcublasLt.so", "libcudnn.so")


class CheckFailed(Exception):
    pass


def docker_client() -> str | None:
    """A docker client that can build and run here: Debian's docker.io client first (the Docker 28 client found
    first on some PATHs needs the buildx plugin to build), else whatever `docker` is on PATH."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def docker_unavailable_reason() -> str | None:
    """None when a Docker daemon answers; otherwise why not, in one line (the test suite's skip reason)."""
    client = docker_client()
    if client is None:
        return "no docker client (Debian: apt-get install docker.io)"
    try:
        info = subprocess.run([client, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer"
    if info.returncode != 0:
        return "no Docker daemon answers (start: dockerd --bridge=none --iptables=false --ip-masq=false &)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_image(docker: str, image: str, code: str) -> str:
    """Run Python code in a throw-away container of the image (the entrypoint activates the Bento's venv)."""
    result = subprocess.run([docker, "run", "--rm", "--network", "host", image, "python", "-c", code],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    if result.returncode != 0:
        raise CheckFailed(f"python in {image} failed: {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


@contextmanager
def running(docker: str, image: str, wait: float = 300) -> Iterator[tuple[str, float]]:
    """The image serving on a free host port until /readyz is 200; yields (url, seconds to ready); removes it."""
    port = free_port()
    name = f"imgclf-check-{port}"
    started = time.monotonic()
    subprocess.run([docker, "run", "-d", "--name", name, "--network", "host", image, "--host", "127.0.0.1",
                    "--port", str(port)], check=True, capture_output=True, timeout=120)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", name], capture_output=True,
                                   text=True).stdout.strip()  # fmt: skip
            if state != "true" or time.monotonic() - started > wait:
                logs = subprocess.run([docker, "logs", name], capture_output=True, text=True)
                raise CheckFailed(
                    f"{image} never became ready (running: {state}):\n{(logs.stdout + logs.stderr)[-3000:]}"
                )
            time.sleep(0.25)
        yield url, time.monotonic() - started
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=120)


def classify_all(url: str, paths: list[Path]) -> list[int]:
    predicted: list[int] = []
    for i in range(0, len(paths), 64):
        chunk = paths[i : i + 64]
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in chunk]
        response = httpx.post(f"{url}/classify", files=files, timeout=120)
        if response.status_code != 200:
            raise CheckFailed(f"/classify answered {response.status_code}: {response.text[:500]}")
        predicted += [answer["index"] for answer in response.json()]
    return predicted


def evaluate(checkpoint: Path, data: Path) -> dict:
    """`python -m training evaluate` on the test split: the figure the container must reproduce."""
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", str(checkpoint), "--data", str(data),
                             "--split", "test"], cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    if result.returncode != 0:
        raise CheckFailed(f"training evaluate failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def check(image: str, checkpoint: Path, data: Path, variant: str = "cpu", docker: str | None = None) -> dict:
    """Every check of the image; returns the measured figures. Raises CheckFailed naming the first that fails."""
    docker = docker or docker_client()
    if docker is None:
        raise CheckFailed("no docker client")
    figures: dict = {"image": image}

    torch_spec = in_image(docker, image, "import importlib.util; print(importlib.util.find_spec('torch') is None)")
    if torch_spec != "True":
        raise CheckFailed(f"torch is importable in {image}: the serving image must not carry it")

    digest = metadata.sha256_of(checkpoint)
    models = json.loads(in_image(docker, image, MODELS_IN_IMAGE))
    if not models:
        raise CheckFailed(f"{image} carries no model in its Bento")
    if digest not in models.values():
        raise CheckFailed(f"no model in {image} was exported from {checkpoint} (sha256 {digest[:12]}): {models}")
    figures["models"] = sorted(models)

    if variant == "gpu":
        gpu = json.loads(in_image(docker, image, GPU_LIBRARIES))
        names = [Path(lib).name for lib in gpu["libraries"]]
        absent = [w for w in WANTED_GPU_LIBRARIES if not any(n.startswith(w) for n in names)]
        if absent or gpu["unresolved"] != ["libcuda.so.1"]:
            raise CheckFailed(f"CUDA libraries: absent {absent}, unresolved by the loader {gpu['unresolved']}")
        figures["gpu_libraries"] = gpu["libraries"]

    paths = sorted((data / "test").rglob("*.png"))
    truth = [int(p.parent.name) for p in paths]
    evaluated = evaluate(checkpoint, data)
    with running(docker, image) as (url, ready_seconds):
        figures["ready_seconds"] = round(ready_seconds, 1)
        predicted = classify_all(url, paths)
        correct = sum(p == t for p, t in zip(predicted, truth))
        # evaluate reports a float32 mean: compare counts of correct images, not rounded fractions
        if evaluated["n"] != len(paths) or correct != round(evaluated["acc"] * evaluated["n"]):
            raise CheckFailed(f"container: {correct}/{len(paths)} correct; training evaluate: {evaluated}")
        figures["accuracy"] = {"container": f"{correct}/{len(paths)}", "evaluate": evaluated["acc"]}

        sample = [next((data / "test" / str(d)).glob("*.png")) for d in range(10)]
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in sample]
        ensemble = httpx.post(f"{url}/ensemble", files=files, timeout=60)
        if ensemble.status_code != 200:
            raise CheckFailed(f"/ensemble answered {ensemble.status_code}: {ensemble.text[:500]}")
        answers = ensemble.json()
        if len(answers) != 10 or not all(a["members"] and a["voting"] for a in answers):
            raise CheckFailed(f"/ensemble answer lacks members or voting: {answers[0]}")
        figures["ensemble_correct"] = f"{sum(a['label'] == p.parent.name for a, p in zip(answers, sample))}/10"

        bad = httpx.post(f"{url}/classify", files=[("images", ("x.png", b"not an image", "image/png"))], timeout=60)
        if bad.status_code != 415 or "image 0" not in bad.json().get("error", ""):
            raise CheckFailed(f"a non-image upload got {bad.status_code}: {bad.text[:300]} (expected 415 naming it)")
        figures["bad_upload"] = bad.status_code
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="classifier:cpu")
    parser.add_argument("--variant", choices=("cpu", "gpu"), default="cpu", help="gpu: also check the CUDA libraries")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "digits-resnet18" / "best.pt")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digits")
    args = parser.parse_args(argv)
    reason = docker_unavailable_reason()
    if reason:
        say_error(reason)
        return 1
    try:
        figures = check(args.image, args.checkpoint, args.data, args.variant)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=1))
    print(f"OK: {args.image} serves {figures['accuracy']['container']} correct, as training evaluate; "
          f"ready in {figures['ready_seconds']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
