"""Write the bentofile of one container variant, derived from the repository's bentofile.yaml.

bentofile.yaml stays the one description of what the Bento carries; a variant changes only the ONNX
Runtime package and the base image, so the two images cannot drift apart in anything else. A serving config that
says `preprocessing: gpu` (--serving-config, by default $SERVING_CONFIG, which deploy/container.sh exports) adds the
GPU backend's decoder and onnx to the gpu variant (service/preprocessing.py, GPU_PACKAGES); the cpu variant cannot
serve it.

    python -m deploy.bentofile --variant cpu|gpu --base-image NAME --out PATH [--serving-config FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path

import onnxruntime.capi.build_and_package_info
import yaml

from core.errors import exit_with
from service.config import load_or_exit
from service.preprocessing import GPU_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("cpu", "gpu")
DOCKERFILE_TEMPLATE = "deploy/Dockerfile.j2"  # relative to the build context, the repository root


def runtime_package(variant: str, ort_version: str) -> str:
    """The ONNX Runtime requirement of a variant, pinned to the version the models were verified with."""
    if variant == "cpu":
        # plain onnxruntime: the CPU provider only, without the 300 MB of CUDA provider libraries
        return f"onnxruntime=={ort_version}"
    # the pip extras pull the CUDA runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN wheels, so no CUDA base
    # image is needed: the host driver (libcuda, mounted by `docker run --gpus`) is all the GPU path needs
    return f"onnxruntime-gpu[cuda,cudnn]=={ort_version}"


def nvidia_library_path(python_version: str, cuda_major: int) -> str:
    """Where the nvidia wheels put their libraries inside the image's virtual environment.

    onnxruntime's CUDA provider links libcudart/libcublas/libcudnn by soname and carries no RUNPATH, so the
    dynamic loader must be told where the wheels put them (the service does not call onnxruntime.preload_dlls).
    CUDA 13 wheels share one nvidia/cu13 folder; CUDA 12 ones have a folder per library.
    """
    site = f"/app/.venv/lib/python{python_version}/site-packages/nvidia"
    folders = ["cu13"] if cuda_major >= 13 else ["cublas", "cuda_runtime", "cufft", "curand", "cuda_nvrtc"]
    return ":".join(f"{site}/{sub}/lib" for sub in [*folders, "cudnn"])


def variant_bentofile(
    source: dict,
    variant: str,
    base_image: str,
    ort_version: str,
    python_version: str,
    cuda_major: int = 13,
    preprocessing: str = "auto",
) -> dict:
    """bentofile.yaml's content with the variant's ONNX Runtime package, base image, Dockerfile and library path,
    and the GPU backend's packages for `preprocessing: gpu`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if preprocessing == "gpu" and variant != "gpu":
        raise ValueError("the serving config says preprocessing: gpu, which only VARIANT=gpu can serve")
    out = {**source, "python": dict(source.get("python", {})), "docker": dict(source.get("docker", {}))}
    packages = [p for p in out["python"].get("packages", []) if not p.replace("_", "-").startswith("onnxruntime")]
    out["python"]["packages"] = [*packages, runtime_package(variant, ort_version)]
    if preprocessing == "gpu":
        out["python"]["packages"] += list(GPU_PACKAGES)
    out["docker"] = {k: v for k, v in out["docker"].items() if k not in ("distro", "cuda_version", "python_version")}
    out["docker"]["base_image"] = base_image
    out["docker"]["dockerfile_template"] = DOCKERFILE_TEMPLATE
    if variant == "gpu":
        # docker.env: the image recipe a dockerfile_template selects takes its ENV lines from there
        env = dict(out["docker"].get("env") or {})
        out["docker"]["env"] = {**env, "LD_LIBRARY_PATH": nvidia_library_path(python_version, cuda_major)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bentofile", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="cpu")
    parser.add_argument("--base-image", required=True)
    parser.add_argument("--source", type=Path, default=ROOT / "bentofile.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--serving-config", default=os.environ.get("SERVING_CONFIG"),
                        help="the config the image serves (default: $SERVING_CONFIG)")  # fmt: skip
    args = parser.parse_args(argv)
    preprocessing = load_or_exit(args.serving_config).preprocessing if args.serving_config else "auto"
    # the Bento records the Python that builds it, and the image's venv is made with that version
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    ort_version = version(onnxruntime.capi.build_and_package_info.package_name)
    # the same build of onnxruntime-gpu goes into the image, so its CUDA major version names the wheels' layout
    cuda = getattr(onnxruntime.capi.build_and_package_info, "cuda_version", "") or "13"
    source = yaml.safe_load(args.source.read_text())
    try:
        bentofile = variant_bentofile(source, args.variant, args.base_image, ort_version, python_version,
                                      int(cuda.split(".")[0]), preprocessing)  # fmt: skip
    except ValueError as e:
        exit_with(str(e))
    args.out.write_text(yaml.safe_dump(bentofile, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
