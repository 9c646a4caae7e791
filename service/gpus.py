"""One worker per GPU (serving.yaml `gpus: all` or a list of GPU ids): which GPU each worker's sessions run on.

    gpus: all          # every GPU ONNX Runtime can use here, one worker each
    gpus: [0, 2]       # these CUDA device ordinals (as CUDA_VISIBLE_DEVICES leaves them numbered)

BentoML 1.4's own assignment does not do this: with `resources={"gpu": N}` and `workers: W` it sets one
CUDA_VISIBLE_DEVICES, the first N GPUs, for every worker (_bentoml_impl/server/allocator.py, `get_worker_env`),
and `bentoml serve` passes its workers no per-worker environment (the worker's `--worker-env` is left unset in
_bentoml_impl/server/serving.py), so every worker would run on GPU 0. What BentoML does give each worker is its
index (circus's WID, from 1: `bentoml.server_context.worker_index`, public). So the service still declares
`resources={"gpu": N}` (what a Bento needs, for whoever schedules it), turns BentoML's allocation off with the
variable its own warning names (BENTOML_DISABLE_GPU_ALLOCATION), so every worker sees the GPUs `bentoml serve`
sees, and worker i puts its sessions on gpus[(i - 1) % len(gpus)] through the CUDA provider's `device_id`.
Checked against bentoml 1.4.40 (its `workers` is a number or "cpu_count", never a per-worker setting). Guard:
`check()` (at import, service/patches.py) requires that variable's name in BentoML's allocator still be the one
set here. This can go when BentoML assigns GPUs per worker.

With `gpus`, `workers` defaults to one per GPU (more are spread round-robin), and decoding, the CPU's share of
the work, runs in processes: `decoding.processes` per worker, or the cores divided among the workers.
"""

from __future__ import annotations

import os

from core import devices
from core.errors import exit_with
from service import patches
from service.config import ServingConfig, few_workers

DISABLE_ALLOCATION = "BENTOML_DISABLE_GPU_ALLOCATION"  # _bentoml_impl/server/allocator.py, DISABLE_GPU_ALLOCATION_ENV


class GpuError(Exception):
    """`gpus` names GPUs this machine does not have."""


def resolve(gpus: list[int] | str, here: list[int]) -> list[int]:
    """The GPU ids `gpus` means on a machine whose ONNX Runtime can use the GPUs `here`."""
    if not here:
        raise GpuError(f"gpus: {gpus}, but ONNX Runtime finds no GPU here (no NVIDIA device, or onnxruntime "
                       "without its CUDA provider): remove gpus, or serve on a machine with GPUs")  # fmt: skip
    if gpus == "all":
        return list(here)
    missing = [g for g in gpus if g not in here]
    if missing:
        raise GpuError(f"gpus: {gpus}, but this machine has no GPU {missing} (its GPUs: {here}): name those, or "
                       "use gpus: all")  # fmt: skip
    return list(gpus)


def ids_or_exit(config: ServingConfig) -> list[int] | None:
    """The GPU ids the config's `gpus` names here, None without `gpus`, or one line on stderr and exit status 2."""
    if config.gpus is None:
        return None
    try:
        ids = resolve(config.gpus, devices.gpu_ids())
        if config.workers_set and config.workers < len(ids):
            raise GpuError(few_workers(config.workers, ids))
    except GpuError as e:
        exit_with(f"serving config: {e}")
    return ids


def workers(config: ServingConfig, ids: list[int] | None) -> int:
    """How many workers serve: one per GPU unless the file says how many."""
    if ids is None or config.workers_set:
        return config.workers
    return len(ids)


def of_worker(ids: list[int], index: int | None) -> int:
    """The GPU of the worker numbered `index` (from 1; None outside a worker: the first)."""
    return ids[((index or 1) - 1) % len(ids)]


def decode_processes(config: ServingConfig, workers: int, cores: int) -> int:
    """Decoding processes per worker: as configured, or with `gpus` each worker's share of the cores."""
    if config.gpus is None or config.decoding.processes:
        return config.decoding.processes
    return max(1, cores // workers)


def leave_allocation_to_workers() -> None:
    """In the `bentoml serve` process, before its workers start: they see every GPU and each picks its own."""
    os.environ[DISABLE_ALLOCATION] = "1"


@patches.checks("service/gpus.py")
def check() -> None:
    """BentoML's allocator still turns its GPU assignment off with the variable `leave_allocation_to_workers` sets."""
    from _bentoml_impl.server import allocator

    if allocator.DISABLE_GPU_ALLOCATION_ENV != DISABLE_ALLOCATION:
        raise patches.mismatch("service/gpus.py", f"the allocator reads {allocator.DISABLE_GPU_ALLOCATION_ENV}")


patches.guard(check)
