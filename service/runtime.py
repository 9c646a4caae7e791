"""ONNX Runtime sessions for served graphs: the device choice, and one batched call per model."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export import metadata


class DeviceError(Exception):
    """`device: cuda` asked for, but ONNX Runtime cannot run on a GPU here."""


def gpu_present() -> bool:
    """An NVIDIA device node exists. onnxruntime-gpu lists the CUDA provider even on machines without
    a GPU and then falls back to the CPU with an error log, so its own list does not answer this."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def providers_for(device: str) -> list[str]:
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not cuda:
        raise DeviceError("device: cuda, but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if device == "cuda" or (device == "auto" and cuda and gpu_present()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Graph:
    """One ONNX file with its metadata and a session; `run` takes a whole batch in one call."""

    def __init__(self, path: str | Path, device: str, cpu_threads: int = 0):
        """cpu_threads: ONNX Runtime's intra-op threads on the CPU provider (0: its default, one per core)."""
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        # ONNX Runtime's intra-op threads spin-wait between calls by default, taking the cores that the
        # threads decoding uploads need: on 2 cores, turning it off took the service at one client from
        # 1.83 to 1.09 cores busy and raised its throughput by 10-23% at 16-64 clients (bench/README.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers_for(device))
        active = self.session.get_providers()
        if device == "cuda" and active[0] != "CUDAExecutionProvider":
            # ONNX Runtime silently falls back to the CPU when CUDA cannot be initialised
            raise DeviceError(f"device: cuda, but ONNX Runtime runs {self.path.name} on {active[0]} (no usable GPU)")
        self.provider = active[0]
        self.meta = metadata.decode(self.session.get_modelmeta().custom_metadata_map)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [N, H, W, 3] -> outputs by name. I/O binding copies the batch to the device once and
        the results back once; on the CPU provider it is the same code path at no extra cost."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("images", np.ascontiguousarray(pixels))
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu()))
