"""The serving container. Everywhere: the bentofile of each image variant. Where a Docker daemon answers: the image
built for real by `deploy/container.sh` from a Bento of a temporary model store, run on the host network by
`deploy.check`, which compares its accuracy over HTTP with `python -m training evaluate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.bentofile import DOCKERFILE_TEMPLATE, variant_bentofile
from deploy.check import CheckFailed, check, docker_client, docker_unavailable_reason
from tests.conftest import ROOT
from tests.test_service import store  # noqa: F401 - the temporary model store the service tests use

SOURCE = yaml.safe_load((ROOT / "bentofile.yaml").read_text())


def test_cpu_variant_swaps_only_the_runtime_and_the_base():
    out = variant_bentofile(SOURCE, "cpu", "imgclf-base:bookworm", "1.31.1", "3.11")
    runtimes = [p for p in out["python"]["packages"] if p.startswith("onnxruntime")]
    assert runtimes == ["onnxruntime==1.31.1"]  # never beside onnxruntime-gpu
    others = [p for p in SOURCE["python"]["packages"] if not p.startswith("onnxruntime")]
    assert [p for p in out["python"]["packages"] if not p.startswith("onnxruntime")] == others
    assert out["service"] == SOURCE["service"] and out["include"] == SOURCE["include"]
    assert out["docker"]["base_image"] == "imgclf-base:bookworm" and "distro" not in out["docker"]
    assert (ROOT / out["docker"]["dockerfile_template"]).is_file() and "env" not in out["docker"]


@pytest.mark.parametrize(("cuda", "folders"), [(13, ["cu13", "cudnn"]), (12, ["cublas", "cuda_runtime", "cudnn"])])
def test_gpu_variant_carries_cuda_wheels_and_tells_the_loader_where(cuda, folders):
    out = variant_bentofile(SOURCE, "gpu", "python:3.12-slim", "1.31.1", "3.12", cuda)
    assert [p for p in out["python"]["packages"] if "onnxruntime" in p] == ["onnxruntime-gpu[cuda,cudnn]==1.31.1"]
    path = out["docker"]["env"]["LD_LIBRARY_PATH"].split(":")
    for folder in folders:
        assert f"/app/.venv/lib/python3.12/site-packages/nvidia/{folder}/lib" in path
    assert out["docker"]["dockerfile_template"] == DOCKERFILE_TEMPLATE


def test_a_config_that_preprocesses_on_the_gpu_gets_the_decoder_in_the_gpu_variant_only(tmp_path):
    gpu = variant_bentofile(SOURCE, "gpu", "python:3.12-slim", "1.31.1", "3.12", 13, "gpu")["python"]["packages"]
    host = variant_bentofile(SOURCE, "gpu", "python:3.12-slim", "1.31.1", "3.12", 13, "host")["python"]["packages"]
    assert gpu == [*host, "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "onnx"] and "onnx" not in host
    with pytest.raises(ValueError, match="preprocessing: gpu, which only VARIANT=gpu can serve"):
        variant_bentofile(SOURCE, "cpu", "x", "1.31.1", "3.11", 13, "gpu")
    # the command reads it from the config container.sh exports, and refuses the cpu variant in one line
    config = tmp_path / "gpu.yaml"
    config.write_text("models: [digits-resnet18]\ndevice: cuda\npreprocessing: gpu\n")
    out = tmp_path / "bentofile.yaml"
    command = [sys.executable, "-m", "deploy.bentofile", "--base-image", "x", "--out", str(out)]
    env = {**os.environ, "SERVING_CONFIG": str(config)}
    made = subprocess.run([*command, "--variant", "gpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "nvidia-nvimgcodec-cu13" in yaml.safe_load(out.read_text())["python"]["packages"]
    refused = subprocess.run([*command, "--variant", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: the serving config says preprocessing: gpu, which only VARIANT=gpu can serve"
    ], refused.stderr


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of cpu, gpu"):
        variant_bentofile(SOURCE, "tpu", "x", "1.31.1", "3.11")


DOCKER_REASON = docker_unavailable_reason()


def _base_reason() -> str | None:
    """The offline base image is built with debootstrap, as root, unless an earlier build cached it."""
    if DOCKER_REASON:
        return None
    cached = subprocess.run([docker_client(), "image", "inspect", "imgclf-base:bookworm"], capture_output=True)
    if cached.returncode != 0 and (os.geteuid() != 0 or subprocess.run(["which", "debootstrap"]).returncode != 0):
        return "the offline base image is not built and cannot be here (needs root and debootstrap)"
    return None


@pytest.mark.slow
@pytest.mark.container
@pytest.mark.skipif(DOCKER_REASON is not None, reason=f"no Docker: {DOCKER_REASON}")
@pytest.mark.skipif(_base_reason() is not None, reason=str(_base_reason()))
def test_container_serves_what_training_measured(store, trained_digits, second_onnx, digits_root):  # noqa: F811
    """make container's script on the digits model, then every check of make container-check; a checkpoint the
    image was not exported from is refused before any accuracy is compared."""
    env = {k: v for k, v in store.items() if k not in ("SERVING_CONFIG", "LOG_PATH")}
    image = f"imgclf-test:{os.getpid()}"
    env.update(IMAGE=image, VARIANT="cpu", VENV=str(Path(sys.executable).parents[1]))
    build = subprocess.run([str(ROOT / "deploy" / "container.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=1800)  # fmt: skip
    try:
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        assert f"== image {image}: " in build.stdout
        figures = check(image, trained_digits / "best.pt", digits_root)
        assert figures["models"][0].startswith("digits-resnet18:") and figures["bad_upload"] == 415
        with pytest.raises(CheckFailed, match="no model in .* was exported from"):
            check(image, second_onnx.with_name("best.pt"), digits_root)  # the second model's checkpoint
    finally:
        subprocess.run([docker_client(), "rmi", "-f", image], capture_output=True)
