"""serving.yaml (or $SERVING_CONFIG): which models and ensembles to serve, on what device, with which limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.voting import VOTINGS

DEFAULT_PATH = "serving.yaml"


class ConfigError(Exception):
    """A serving.yaml that cannot be served; raised at start-up."""


@dataclass
class Ensemble:
    members: list[str]
    voting: str = "soft"
    weights: list[float] | None = None


@dataclass
class Limits:
    max_images_per_request: int = 64
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000


@dataclass
class CudaOptions:
    """ONNX Runtime CUDA provider options that change speed (service/runtime.py says why each default).

    cudnn_conv_algo_search: EXHAUSTIVE benchmarks every cuDNN algorithm on a session's first call per
    shape (about 1 s for ResNet-50 on an H100) and then runs the fastest; with one fixed shape per
    session and that call made at start-up, its cost is paid once. prefer_nhwc: run convolutions in
    NHWC (tensor cores prefer it; a transpose is inserted where needed). cuda_graph: capture each fixed
    batch size as a CUDA graph and replay it, binding the input and output buffers once.
    """

    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    prefer_nhwc: bool = False
    cuda_graph: bool = False


CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")

# max_batch_size: images in one session call. max_latency_ms: a request that waits longer than this for
# its batch to start is refused with 503. max_wait_ms: how long a free model waits for requests still
# being decoded before it runs the ones it has (service/batcher.py). sizes: the batch sizes a session
# call may run at ("auto", a list, or "none"); a batch is padded up to the next one (service/runtime.py).
BATCHING = {"max_batch_size": 64, "max_latency_ms": 50, "max_wait_ms": 10.0, "sizes": "auto"}


@dataclass
class ServingConfig:
    models: list[str]
    default_model: str
    device: str = "auto"
    ensembles: dict[str, Ensemble] = field(default_factory=dict)
    max_batch_size: int = BATCHING["max_batch_size"]
    max_latency_ms: int = BATCHING["max_latency_ms"]
    max_wait_ms: float = BATCHING["max_wait_ms"]
    batch_sizes: list[int] | str = BATCHING["sizes"]
    workers: int = 1
    decode_processes: int = 0
    cuda: CudaOptions = field(default_factory=CudaOptions)
    limits: Limits = field(default_factory=Limits)


def model_name(tag: str) -> str:
    """'digits-resnet18:abc123' -> 'digits-resnet18': the name clients use."""
    return tag.split(":", 1)[0]


def batch_sizes(config: ServingConfig, on_gpu: bool) -> list[int] | None:
    """The fixed batch sizes of every session call, ascending, or None for "any size".

    "auto" pads only on a GPU: there a session call at a batch size it did not run last pays cuDNN's
    algorithm choice again (0.7-1 s a call on an H100, bench/README.md), while on the CPU provider a
    new shape costs nothing and padding would only add work. Powers of two up to max_batch_size keep
    the padding under half of any call.
    """
    sizes = config.batch_sizes
    if sizes == "none" or (sizes == "auto" and not on_gpu):
        return None
    if sizes == "auto":
        powers = [2**i for i in range(config.max_batch_size.bit_length()) if 2**i < config.max_batch_size]
        return [*powers, config.max_batch_size]
    return sorted(sizes)


def _expect(value: Any, kind: type | tuple, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{what} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def parse(raw: dict[str, Any]) -> ServingConfig:
    known = {"device", "default_model", "models", "ensembles", "batching", "limits", "workers", "decoding", "cuda"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown serving.yaml keys {sorted(unknown)}; valid: {sorted(known)}")
    models = [str(m) for m in _expect(raw.get("models"), list, "models")]
    if not models:
        raise ConfigError("models must name at least one model-store tag")
    names = [model_name(m) for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models names a model twice: {models}")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    workers = raw.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a whole number of at least 1, got {workers!r}")
    default = str(raw.get("default_model", names[0]))
    if default not in names:
        raise ConfigError(f"default_model '{default}' is not one of models {names}")
    ensembles = {}
    for name, spec in (raw.get("ensembles") or {}).items():
        spec = _expect(spec, dict, f"ensembles.{name}")
        members = [model_name(str(m)) for m in _expect(spec.get("members"), list, f"ensembles.{name}.members")]
        missing = [m for m in members if m not in names]
        if missing or not members:
            raise ConfigError(f"ensembles.{name} members {missing or members} must be served models {names}")
        voting = spec.get("voting", "soft")
        if voting not in VOTINGS:
            raise ConfigError(f"ensembles.{name}.voting must be one of {VOTINGS}, got {voting!r}")
        weights = spec.get("weights")
        if weights is not None and (len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(
                f"ensembles.{name}.weights must be {len(members)} non-negative numbers with a positive sum"
            )
        if voting == "weighted" and weights is None:
            raise ConfigError(f"ensembles.{name} uses weighted voting but has no weights")
        ensembles[str(name)] = Ensemble(members, voting, [float(w) for w in weights] if weights else None)
    batching = raw.get("batching") or {}
    unknown_batching = set(batching) - set(BATCHING)
    if unknown_batching:
        raise ConfigError(f"unknown batching keys {sorted(unknown_batching)}; valid: {list(BATCHING)}")
    batching = {**BATCHING, **batching}
    if int(batching["max_batch_size"]) < 1 or float(batching["max_wait_ms"]) < 0:
        raise ConfigError("batching.max_batch_size must be at least 1 and batching.max_wait_ms at least 0")
    sizes = batching["sizes"]
    if isinstance(sizes, list):
        if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
            raise ConfigError(f"batching.sizes must be whole numbers of at least 1, got {sizes!r}")
        if len(set(sizes)) != len(sizes) or max(sizes) < int(batching["max_batch_size"]):
            raise ConfigError(
                f"batching.sizes {sizes} must be distinct and reach batching.max_batch_size "
                f"({batching['max_batch_size']}), so that a full batch runs at one of them"
            )
    elif sizes not in ("auto", "none"):
        raise ConfigError(f"batching.sizes must be auto, none or a list of batch sizes, got {sizes!r}")
    decoding = _expect(raw.get("decoding") or {}, dict, "decoding")
    if set(decoding) - {"processes"}:
        raise ConfigError(f"unknown decoding keys {sorted(set(decoding) - {'processes'})}; valid: ['processes']")
    processes = decoding.get("processes", 0)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 0:
        raise ConfigError(f"decoding.processes must be a whole number of at least 0, got {processes!r}")
    cuda = _expect(raw.get("cuda") or {}, dict, "cuda")
    unknown_cuda = set(cuda) - set(CudaOptions.__dataclass_fields__)
    if unknown_cuda:
        raise ConfigError(f"unknown cuda keys {sorted(unknown_cuda)}; valid: {list(CudaOptions.__dataclass_fields__)}")
    cuda = CudaOptions(**cuda)
    if cuda.cudnn_conv_algo_search not in CONV_ALGO_SEARCHES:
        raise ConfigError(
            f"cuda.cudnn_conv_algo_search must be one of {CONV_ALGO_SEARCHES}, got {cuda.cudnn_conv_algo_search!r}"
        )
    for key in ("prefer_nhwc", "cuda_graph"):
        _expect(getattr(cuda, key), bool, f"cuda.{key}")
    limits = raw.get("limits") or {}
    unknown_limits = set(limits) - set(Limits.__dataclass_fields__)
    if unknown_limits:
        raise ConfigError(f"unknown limits {sorted(unknown_limits)}")
    return ServingConfig(
        models=models,
        default_model=default,
        device=device,
        ensembles=ensembles,
        max_batch_size=int(batching["max_batch_size"]),
        max_latency_ms=int(batching["max_latency_ms"]),
        max_wait_ms=float(batching["max_wait_ms"]),
        batch_sizes=sizes,
        workers=workers,
        decode_processes=processes,
        cuda=cuda,
        limits=Limits(**{k: int(v) for k, v in limits.items()}),
    )


def load(path: str | Path | None = None) -> ServingConfig:
    path = Path(path or os.environ.get("SERVING_CONFIG", DEFAULT_PATH))
    if not path.is_file():
        raise ConfigError(f"serving config not found: {path} (set SERVING_CONFIG to another file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse(_expect(raw, dict, str(path)))
