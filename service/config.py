"""serving.yaml (or $SERVING_CONFIG): which models and ensembles to serve, on what device, with which limits.

The file is described by typed pydantic models (`ServingConfig` and its sections), so every key, type, range
and unknown key is checked in one place; `parse` turns any mistake into one line that names the key path,
the value and what is expected (core/schema.py, which renders training recipes' mistakes too), and builds
the `ServingConfig` the service reads.
"""

from __future__ import annotations

import os
import typing as t
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from core.errors import exit_with
from core.schema import MAX_BYTES, Bounded, Refused, cut, error_lines, load_yaml, shown, shown_text
from core.schema import Section as _Section
from core.voting import VOTINGS

DEFAULT_PATH = "serving.yaml"


class ConfigError(Exception):
    """A serving.yaml that cannot be served; raised at start-up."""


CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class Limits(_Section):
    """What one request, and one worker, may cost (service/bodies.py, service/budget.py).

    max_body_bytes: a request body's bytes; by default what the image limits allow (max_images_per_request images
    of max_image_bytes) plus 1 MiB for the other fields and the parts' headers. max_json_bytes: a JSON body (it
    carries no image). decode_budget_bytes: the bytes of decoded pixels and their intermediates that a worker holds
    in flight at once; an image that would exceed it waits in line, refused (503) once the budget has given nothing
    back for decode_wait_ms, and an image that alone exceeds it is refused (413)."""

    max_images_per_request: int = Field(64, ge=1)
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_body_bytes: int | None = Field(None, ge=1, description="a whole number of at least 1 (default: derived)")
    max_json_bytes: int = Field(1024 * 1024, ge=1)
    decode_budget_bytes: int = Field(768 * 1024 * 1024, ge=1)
    decode_wait_ms: int = Field(10_000, ge=0)

    def body_bytes(self) -> int:
        """The bound on a request body."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_images_per_request * self.max_image_bytes + 1024 * 1024


class CudaOptions(_Section):
    """ONNX Runtime CUDA provider options that change speed (service/runtime.py says why each default).

    cudnn_conv_algo_search: EXHAUSTIVE benchmarks every cuDNN algorithm on a session's first call per
    shape (bench/README.md, 'On a GPU') and then runs the fastest; with one fixed shape per
    session and that call made at start-up, its cost is paid once. prefer_nhwc: run convolutions in
    NHWC (tensor cores prefer it; a transpose is inserted where needed). cuda_graph: capture each fixed
    batch size as a CUDA graph and replay it, binding the input and output buffers once.
    """

    cudnn_conv_algo_search: Literal[CONV_ALGO_SEARCHES] = "EXHAUSTIVE"
    prefer_nhwc: bool = False
    cuda_graph: bool = False


class Ensemble(_Section):
    members: list[str] = Field(min_length=1, json_schema_extra={"expected": "a list of at least one served model"})
    voting: Literal[VOTINGS] = "soft"
    weights: list[float] | None = Field(None, description="one non-negative number per member")

    @model_validator(mode="after")
    def _weights_fit_members(self) -> Ensemble:
        self.members = [model_name(m) for m in self.members]
        twice = sorted({m for m in self.members if self.members.count(m) > 1})
        if twice:  # a member listed twice would vote twice: say so with weights instead
            raise ValueError(f"{{path}}.members names {twice} more than once; to count a member more, use "
                             "voting: weighted with weights")  # fmt: skip
        if self.weights is not None:
            if len(self.weights) != len(self.members) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError(
                    f"{{path}}.weights must be {len(self.members)} non-negative numbers with a positive sum "
                    f"(one per member), got {self.weights}"
                )
        elif self.voting == "weighted":
            raise ValueError("{path} uses weighted voting but has no weights")
        return self


# max_batch_size: images in one session call. max_latency_ms: a request that waits longer than this for
# its batch to start is refused with 503. max_wait_ms: how long a free model waits for requests still
# being decoded before it runs the ones it has (service/batcher.py). sizes: the batch sizes a session
# call may run at ("auto", a list, or "none"); a batch is padded up to the next one (service/runtime.py).
# max_latency_ms is 1000, the value serving.yaml ships: it sheds an overloaded model's queue, it is not a
# wait, and a bound below the p50 latency of 16 clients on a 2-core machine (bench/README.md, 'Digits on the CPU')
# would refuse working traffic.
BATCHING = {"max_batch_size": 64, "max_latency_ms": 1000, "max_wait_ms": 10.0, "sizes": "auto"}


class Batching(_Section):
    max_batch_size: int = Field(BATCHING["max_batch_size"], ge=1)
    max_latency_ms: int = Field(BATCHING["max_latency_ms"], ge=1)
    max_wait_ms: float = Field(BATCHING["max_wait_ms"], ge=0)
    sizes: Any = Field(BATCHING["sizes"], description="auto, none or a list of whole numbers of at least 1")

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, sizes: Any) -> Any:
        whole = isinstance(sizes, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes
        )
        if not (sizes in ("auto", "none") or (whole and sizes)):
            raise ValueError(
                f"batching.sizes must be auto, none or a list of whole numbers of at least 1, got {sizes!r}"
            )
        return sizes

    @model_validator(mode="after")
    def _sizes_end_at_max_batch_size(self) -> Batching:
        # a batch runs at the first size that holds it: a full batch needs max_batch_size among them, and a size
        # above it only pads (sizes [1, 2, 512] with max_batch_size 8 ran 3 images as a batch of 512)
        sizes = self.sizes
        if isinstance(sizes, list) and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                f"batching.sizes {sizes} must be distinct, ascending and end at batching.max_batch_size "
                f"({self.max_batch_size}): a full batch runs at the last size, and a larger one would only pad"
            )
        return self


class Decoding(_Section):
    processes: int = Field(0, ge=0)


class Observability(_Section):
    """What BentoML adds to every request besides /metrics (bench/README.md has what each costs).

    access_log: one INFO line per request. tracing: an OpenTelemetry span per request on the classification
    routes; BentoML exports spans only where its own configuration names an exporter (`tracing.exporter_type`),
    so without one the spans are made and dropped."""

    access_log: bool = True
    tracing: bool = False


class Connections(_Section):
    """service/connections.py. header_timeout_s: a connection must complete its request headers within this long
    of opening (or of its previous answer). body_timeout_s: a request's whole body must arrive within this long of
    its headers, else 408 (service/http/bodies.py): a slow or unfinished upload is the client's fault, not a 504 after
    the request timeout. drain_s: on SIGTERM, the longest a worker keeps answering (readyz 503, each answer closing
    its connection) before it shuts down; 0: shut down at once. max_open: the most connections a worker holds open;
    one more is answered 503 with Retry-After and closed. By default half the worker's soft file limit (ulimit -n);
    at most that limit less the files a worker needs besides (checked where it serves). backlog: the listening
    socket's queue of connections not yet accepted, and so the most a worker accepts in one turn of its event loop
    (asyncio accepts up to the backlog at once): BentoML's 2048 let a burst of 10,000 connections hold an answer for
    up to 382 ms, 512 for up to 104 ms (bench/README.md, 'Attacks'). 512 is also nginx's default."""

    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    drain_s: float = Field(10.0, ge=0)
    max_open: int | None = Field(None, ge=1)
    backlog: int = Field(512, gt=64)  # BentoML refuses 64 or fewer


class Auth(_Section):
    """API keys (service/http/keys.py). api_keys_file: one key a line, blank lines and `#` comments ignored (a mounted
    Kubernetes Secret is such a file); read when `bentoml serve` starts and again whenever it changes. Every route
    but the health checks then needs a key, except /metrics and the docs where these say so: both open by default,
    as Prometheus scrapes without a key unless told one, and a browser cannot send a header to open the page at /
    (the page's Authorize button sends one with each request it makes)."""

    api_keys_file: str = Field(
        min_length=1, json_schema_extra={"expected": "the path of a file of API keys, one a line"}
    )
    protect_metrics: bool = False
    protect_docs: bool = False


SECTIONS = ("ensembles", "batching", "limits", "decoding", "cuda", "observability", "connections")


def _tag(tag: str) -> str:
    """A model-store tag as BentoML accepts it (bentoml.Tag: name or name:version, each lowercase letters,
    digits, '-', '_' and '.', at most 63 characters), checked here so a bad one is a line, not a traceback."""
    from bentoml import Tag

    try:
        Tag.from_taglike(tag.lower())  # BentoML lowercases a tag (with a warning line), so only the rest is checked
    except Exception as e:  # noqa: BLE001 - ValueError or BentoMLException, by the part at fault
        raise ValueError(f"{{path}} '{tag}' is not a valid model-store tag: {e}") from None
    return tag


class ServingConfig(_Section):
    """The whole file, key for key: what the service, its start-up checks and the Bento read."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_model: str | None = Field(None, description="text: one of models (default: the first)")
    models: list[Annotated[str, AfterValidator(_tag)]] = Field(
        min_length=1, json_schema_extra={"expected": "a list of at least one model-store tag"}
    )
    ensembles: dict[str, Ensemble] = {}
    batching: Batching = Batching()
    workers: int = Field(1, ge=1)
    decoding: Decoding = Decoding()
    # where the pixels are made (service/preprocessing.py says why these names): Pillow on the host, or the GPU
    # backend; auto: host wherever that backend cannot run (today everywhere)
    preprocessing: Literal["auto", "host", "gpu"] = "auto"
    cuda: CudaOptions = CudaOptions()
    limits: Limits = Limits()
    connections: Connections = Connections()
    observability: Observability = Observability()
    # None when the file has no auth (a default is never validated); typed Auth, not Auth | None, so that `auth:`
    # left empty is refused rather than serving every route to anyone, and errors name the key inside auth
    auth: Auth = None  # type: ignore[assignment]
    # one worker per GPU, each with its sessions on its own device (service/gpus.py): all, or CUDA device ordinals
    gpus: Any = Field(None, description="all or a list of distinct GPU ids (whole numbers of at least 0)")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, raw: Any) -> Any:
        # `batching:` with nothing under it is YAML's null: the section's defaults
        if isinstance(raw, dict):
            return {k: v for k, v in raw.items() if not (k in SECTIONS and v is None)}
        return raw

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_ids(cls, gpus: Any) -> Any:
        ids = isinstance(gpus, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in gpus)
        if not (gpus == "all" or (ids and gpus and len(set(gpus)) == len(gpus))):
            raise ValueError(f"gpus must be all or a list of distinct GPU ids (whole numbers of at least 0), "
                             f"got {gpus!r}")  # fmt: skip
        return gpus

    @property
    def workers_set(self) -> bool:
        """`workers` given in the file, not its default (with gpus: one worker per GPU)."""
        return "workers" in self.model_fields_set

    @model_validator(mode="after")
    def _gpus(self) -> ServingConfig:
        if self.gpus is None:
            return self
        if self.device == "cpu":
            raise ValueError("gpus puts each worker on a GPU, but device is cpu: set device: cuda, or remove gpus")
        if isinstance(self.gpus, list) and "workers" in self.model_fields_set and self.workers < len(self.gpus):
            raise ValueError(few_workers(self.workers, self.gpus))
        return self

    @model_validator(mode="after")
    def _gpu_preprocessing(self) -> ServingConfig:
        if self.preprocessing == "gpu" and self.device == "cpu":
            raise ValueError("preprocessing: gpu makes the pixels on the GPU, but device is cpu: set device: cuda "
                             "(or auto), or preprocessing: auto or host")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _names(self) -> ServingConfig:
        names = [model_name(m) for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models names a model twice: {self.models}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model '{self.default_model}' is not one of models {names}")
        # the name a request without `model` gets (not in model_fields_set: the file did not say it)
        self.__dict__["default_model"] = self.default_model or names[0]
        for name, ensemble in self.ensembles.items():
            missing = [m for m in ensemble.members if m not in names]
            if missing:
                raise ValueError(f"ensembles.{name} members {missing} must be served models {names}")
        return self


def few_workers(workers: int, gpus: list[int]) -> str:
    return f"workers ({workers}) is fewer than gpus {gpus}: a GPU would have no worker; remove workers (one per GPU)"


def model_name(tag: str) -> str:
    """'digits-resnet18:abc123' -> 'digits-resnet18': the name clients use."""
    return tag.split(":", 1)[0]


def parse(raw: dict[str, Any]) -> ServingConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"the file must be a mapping of keys ({', '.join(ServingConfig.model_fields)}), got {shown(raw)}"
        )
    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("; ".join(error_lines(e, ServingConfig, "serving.yaml"))) from None


class _UniqueKeys(Bounded, yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: plain YAML keeps the last
    one, so `device: cuda` above a forgotten `device: cpu` would silently serve on the CPU; and bounded
    (core/schema.py, `Bounded`): aliases, values and nesting past their bounds are refused while composing."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` is meant to be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: the base class says so
                continue
            if not seen:
                first[key] = key_node.start_mark.line + 1
            else:
                lines = f"lines {first[key]} and {key_node.start_mark.line + 1}"
                twice = f"key '{shown_text(key)}' is given twice ({lines}): remove one"
                raise yaml.constructor.ConstructorError(None, None, twice)
        return super().construct_mapping(node, deep)


def read(path: Path) -> str:
    """The text of a serving config file; a missing file, one over MAX_BYTES (by its size, before it is read;
    and never more than that is read, should it grow) or one that is not UTF-8 is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"serving config not found: {path} (set SERVING_CONFIG to another file)")
    try:
        size = path.stat().st_size
        if size <= MAX_BYTES:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
            size = len(data)
        if size > MAX_BYTES:
            raise ConfigError(f"{path} is {size} bytes; a serving config may hold at most {MAX_BYTES}")
        return data.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        byte = f"byte {e.start} is {e.object[e.start]:#04x}"
        raise ConfigError(f"{path} is not UTF-8 text ({byte}): save it as UTF-8") from None


def load(path: str | Path | None = None) -> ServingConfig:
    path = Path(path or config_path())
    return loads(read(path), str(path))


def loads(text: str, where: str) -> ServingConfig:
    """The config in `text`, read from `where` (a path, or the Bento that carries it), which errors name."""
    try:
        raw = load_yaml(text, _UniqueKeys)
    except Refused as e:
        raise ConfigError(f"{where} is refused: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {cut(str(e))}") from None
    try:
        return parse({} if raw is None else raw)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {where})") from None


def load_or_exit(path: str | Path | None = None, text: str | None = None) -> ServingConfig:
    """`load` (or `loads(text, path)`), or one clear line on stderr and exit status 2 instead of a traceback
    through BentoML's CLI: what the service runs at import, which is the first thing `bentoml serve` does."""
    return _or_exit(lambda: load(path) if text is None else loads(text, str(path)))


def read_or_exit(path: Path) -> str:
    """`read`, or one line on stderr and exit status 2."""
    return _or_exit(lambda: read(path))


def _or_exit(step: t.Callable[[], t.Any]) -> t.Any:
    try:
        return step()
    except ConfigError as e:
        exit_with(f"serving config: {e}")


def config_path() -> Path:
    """The file `bentoml serve` and `bentoml build` read in a checkout: $SERVING_CONFIG, or serving.yaml."""
    return Path(os.environ.get("SERVING_CONFIG", DEFAULT_PATH))
