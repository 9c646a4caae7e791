"""Which ONNX Runtime provider runs a graph here: the one answer the export check and the service share."""

from __future__ import annotations

import glob
import os

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class DeviceError(Exception):
    """`device: cuda` asked for, but ONNX Runtime cannot run on a GPU here."""


def gpu_present() -> bool:
    """An NVIDIA device node exists. onnxruntime-gpu lists the CUDA provider even on machines without
    a GPU and then falls back to the CPU with an error log, so its own list does not answer this."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def uses_gpu(device: str) -> bool:
    """Whether `device` (auto | cpu | cuda) runs on the CUDA provider here; cuda that cannot is an error."""
    import onnxruntime as ort

    cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not cuda:
        raise DeviceError("device: cuda, but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return device == "cuda" or (device == "auto" and cuda and gpu_present())


def providers(device: str = "auto") -> list[str]:
    """ONNX Runtime's provider list for `device`: CUDA first where it runs here, the CPU always."""
    return [CUDA, CPU] if uses_gpu(device) else [CPU]


def gpu_ids() -> list[int]:
    """The CUDA device ordinals ONNX Runtime can run on here ([] without its CUDA provider or an NVIDIA device):
    0..n-1 over the devices CUDA_VISIBLE_DEVICES leaves visible, the numbering the CUDA provider's device_id uses."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers() or not gpu_present():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(len(glob.glob("/dev/nvidia[0-9]*"))))
    # CUDA stops at the first entry that names no device ("-1", ""), so the entries before it are what it sees
    named = []
    for entry in visible.split(","):
        if not entry.strip() or entry.strip() == "-1":
            break
        named.append(entry)
    return list(range(len(named)))
