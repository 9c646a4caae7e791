"""`make bento`: a Bento of the models a serving config names, with the ONNX Runtime its `device` needs.

    SERVING_CONFIG=mine.yaml python -m deploy.bento          (make bento SERVING_CONFIG=mine.yaml)

bentofile.yaml lists onnxruntime-gpu, which runs on a CPU too but brings the CUDA provider's libraries and a
CUDA requirement a CPU host does not meet; a config that says `device: cpu` gets plain onnxruntime at the same
version range instead (`auto` and `cuda` keep onnxruntime-gpu: the Bento may land on a GPU). A config that says
`preprocessing: gpu` also gets the GPU backend's decoder and onnx (service/preprocessing.py, GPU_PACKAGES), which
a Bento otherwise leaves out. Everything else is
bentofile.yaml's, and the config is packed as `SERVING_CONFIG=... bentoml build` packs it (service/packed.py).
The last lines are this project's next steps: serve the Bento, or build its container with `make container`,
which picks the runtime of its VARIANT (deploy/bentofile.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from service.config import load_or_exit
from service.preprocessing import GPU_PACKAGES

ROOT = Path(__file__).resolve().parents[1]


def runtime_for(device: str, packages: list[str]) -> list[str]:
    """bentofile.yaml's packages with the ONNX Runtime package a `device` needs, its version range kept."""
    out = []
    for package in packages:
        name = package.replace("_", "-")
        if name.startswith("onnxruntime") and device == "cpu":
            spec = name.removeprefix("onnxruntime-gpu").removeprefix("onnxruntime")
            package = f"onnxruntime{spec}"  # noqa: PLW2901 - the one package replaced in place
        out.append(package)
    return out


def bentofile_for(source: dict, device: str, preprocessing: str = "auto") -> dict:
    """bentofile.yaml's content for a config's `device` and `preprocessing`."""
    python = dict(source.get("python", {}))
    python["packages"] = runtime_for(device, list(python.get("packages", [])))
    if preprocessing == "gpu":
        python["packages"] += list(GPU_PACKAGES)
    return {**source, "python": python}


def next_steps(tag: str, serving_config: str, runtime: str) -> str:
    config = f" SERVING_CONFIG={serving_config}" if serving_config != "serving.yaml" else ""
    return "\n".join([
        f"== Bento {tag} ({runtime}; serving {serving_config})",
        f"   serve it:         bentoml serve {tag} --port 3000",
        f"   its container:    make container{config}            (VARIANT=gpu for CUDA; needs a Docker daemon)",
        f"   what it carries:  bentoml get {tag} -o yaml",
    ])  # fmt: skip


def main() -> int:
    serving_config = os.environ.get("SERVING_CONFIG") or "serving.yaml"
    config = load_or_exit(serving_config)  # a bad config: one line and exit 2, before anything is built
    source = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    bentofile = bentofile_for(source, config.device, config.preprocessing)
    [runtime] = [p for p in bentofile["python"]["packages"] if p.replace("_", "-").startswith("onnxruntime")]
    bentoml = Path(sys.executable).parent / "bentoml"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bentofile.yaml"
        path.write_text(yaml.safe_dump(bentofile, sort_keys=False))
        env = {**os.environ, "SERVING_CONFIG": str(Path(serving_config).resolve())}
        built = subprocess.run(
            [str(bentoml), "build", "-f", str(path), "--output", "tag", str(ROOT)], env=env, stdout=subprocess.PIPE,
            text=True, check=False,
        )  # fmt: skip
    if built.returncode != 0:
        return built.returncode  # bentoml build said why on stderr (a model missing from the store, ...)
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(next_steps(tag, serving_config, f"device {config.device}: {runtime}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
