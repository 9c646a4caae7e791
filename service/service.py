"""The BentoML service: `/classify`, `/ensemble`, `/models` over the graphs named in serving.yaml.

    bentoml serve                                   # from the repository root (bentofile.yaml)
    SERVING_CONFIG=other.yaml bentoml serve
    curl -F images=@digit.png http://localhost:3000/classify

Two services: `Classifier` takes HTTP requests, decodes and resizes uploads in threads off the event
loop, and calls `Inference.infer`, a batchable API. BentoML's dispatcher merges concurrent calls into
one list, and `infer` runs one ONNX Runtime call per model on it (adaptive batching only happens across
that service boundary, not when a method calls a batchable method of its own object).
"""

from __future__ import annotations

import asyncio
import sys
import time
import typing as t
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from export import metadata
from export.metadata import MODEL_FILE
from service import config as serving_config
from service.decode import InputError, decode
from service.runtime import Graph
from service.voting import vote

try:
    CONFIG = serving_config.load()
except serving_config.ConfigError as e:  # one clear line instead of a traceback through bentoml's CLI
    print(f"error: serving config: {e}", file=sys.stderr)
    raise SystemExit(2) from None
NAMES = [serving_config.model_name(tag) for tag in CONFIG.models]

BATCH_IMAGES = bentoml.metrics.Histogram(
    name="inference_batch_images",
    documentation="Images in one ONNX Runtime call, per model: the batch size actually run",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="inference_seconds",
    documentation="Seconds of one ONNX Runtime call, per model",
    labelnames=["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETRIES = 3  # of an inference call whose connection broke (see `Classifier._infer`)
REQUESTS = bentoml.metrics.Counter(
    name="model_requests", documentation="Classification requests per model or ensemble", labelnames=["model"]
)


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class Classification(Prediction):
    top_k: list[Prediction]
    model: str


class MemberAnswer(Prediction):
    model: str


class EnsembleClassification(Prediction):
    voting: str
    agreement: float = Field(description="share of members whose top-1 label is the ensemble's label")
    votes: dict[str, int] = Field(description="member top-1 votes per label (labels with no vote are left out)")
    top_k: list[Prediction]
    members: list[MemberAnswer]


def _inference_class() -> type:
    """`Inference` with one BentoModel attribute per served model, so `bentoml build` packs them."""
    attrs: dict[str, t.Any] = {f"model_{i}": bentoml.models.BentoModel(tag) for i, tag in enumerate(CONFIG.models)}

    def __init__(self) -> None:
        self.graphs = {}
        for i, (tag, name) in enumerate(zip(CONFIG.models, NAMES)):
            ref = attrs[f"model_{i}"]
            stored = ref.stored
            if stored is None:
                raise RuntimeError(f"model '{tag}' is not in the BentoML model store; export it with --store {name}")
            path = Path(stored.path_of(MODEL_FILE))
            try:
                self.graphs[name] = Graph(path, CONFIG.device)
            except Exception as e:
                raise RuntimeError(f"cannot load model '{stored.tag}' from {path}: {e}") from e

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, items: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        """items: {"models": [names], "pixels": uint8 [H, W, 3]} -> {name: probabilities [C]} each.
        All items that need a model go through it in one session call."""
        results: list[dict[str, t.Any]] = [{} for _ in items]
        for name in NAMES:
            wanted = [i for i, item in enumerate(items) if name in item["models"]]
            if not wanted:
                continue
            pixels = np.stack([items[i]["pixels"] for i in wanted])
            start = time.perf_counter()
            probabilities = self.graphs[name].run(pixels)["probabilities"]
            INFERENCE_SECONDS.labels(model=name).observe(time.perf_counter() - start)
            BATCH_IMAGES.labels(model=name).observe(len(wanted))
            for row, i in enumerate(wanted):
                results[i][name] = probabilities[row]
        return results

    attrs.update(__init__=__init__, infer=infer)
    resources = {"gpu": 1} if CONFIG.device == "cuda" else {}
    return bentoml.service(name="inference", workers=1, resources=resources)(type("Inference", (), attrs))


Inference = _inference_class()


def _error(e: InputError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status)


def _ranked(labels: list[str], scores: np.ndarray, order: np.ndarray, k: int) -> list[Prediction]:
    return [Prediction(label=labels[j], index=int(j), probability=float(scores[j])) for j in order[:k]]


@bentoml.service(name="classifier", workers=1, traffic={"timeout": 60})
class Classifier:
    inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        # the model store entry's metadata (written by `python -m export --store`) says what each model
        # expects; the dependency's endpoints are not callable yet while services start
        self.models, self.preprocess = {}, {}
        for tag, name in zip(CONFIG.models, NAMES):
            try:
                stored = bentoml.models.get(tag)
            except bentoml.exceptions.NotFound:
                raise RuntimeError(
                    f"model '{tag}' is not in the BentoML model store; export it with --store {name}"
                ) from None
            meta = stored.info.metadata
            self.models[name] = {
                "tag": str(stored.tag),
                "arch": meta["arch"],
                "labels": meta["labels"],
                "input_size": [meta["crop_size"], meta["crop_size"]],
                "resize_size": meta["resize_size"],
                "interpolation": meta["interpolation"],
                "precision": meta.get("precision", "fp32"),
                "metrics": meta.get("metrics", {}),
            }
            self.preprocess[name] = metadata.preprocess_of(meta)
        self.limits = CONFIG.limits

    async def _pixels(self, images: list[Path], model: str) -> list[np.ndarray]:
        if not images:
            raise InputError(400, "no images: send one or more files in the multipart field 'images'")
        if len(images) > self.limits.max_images_per_request:
            raise InputError(413, f"{len(images)} images; the limit is {self.limits.max_images_per_request} a request")
        preprocess = self.preprocess[model]

        def one(i: int, path: Path) -> np.ndarray:
            size = path.stat().st_size
            if size > self.limits.max_image_bytes:  # refuse before reading it into memory
                raise InputError(413, f"image {i} is {size} bytes; the limit is {self.limits.max_image_bytes}")
            return decode(path.read_bytes(), i, self.limits, preprocess)

        # PIL releases the GIL while decoding and resizing: threads use every core, off the event loop
        return list(await asyncio.gather(*(asyncio.to_thread(one, i, p) for i, p in enumerate(images))))

    async def _infer(self, items: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        """`Inference.infer`, sent again when the connection to the inference worker breaks before an answer.

        BentoML's client keeps idle connections to a dependency for 15 s (aiohttp's default) while its
        uvicorn closes them after 5 s, so under changing load a request can go out on a connection the
        worker is closing: it fails before the worker reads it (measured: 187 of 2,882 requests got a 500
        in one `bench.serve_load` run). Inference has no side effects, so sending it again is safe.
        """
        for attempt in range(RETRIES + 1):
            try:
                return await self.inference.to_async.infer(items)
            except aiohttp.ClientConnectionError:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _check_top_k(self, top_k: int, classes: int) -> int:
        if top_k < 1:
            raise InputError(400, f"top_k must be at least 1, got {top_k}")
        return min(top_k, classes)

    @bentoml.api(route="/classify")
    async def classify(
        self, images: list[Path], top_k: int = 5, model: str = CONFIG.default_model
    ) -> list[Classification]:
        """Classify each uploaded image with one model."""
        try:
            if model not in self.models:
                raise InputError(404, f"unknown model '{model}'; served models: {', '.join(NAMES)}")
            labels = self.models[model]["labels"]
            k = self._check_top_k(top_k, len(labels))
            pixels = await self._pixels(images, model)
        except InputError as e:
            return _error(e)
        REQUESTS.labels(model=model).inc()
        answers = await self._infer([{"models": [model], "pixels": p} for p in pixels])
        out = []
        for answer in answers:
            probs = np.asarray(answer[model])
            order = np.argsort(-probs, kind="stable")
            best = int(order[0])
            out.append(Classification(label=labels[best], index=best, probability=float(probs[best]),
                                      top_k=_ranked(labels, probs, order, k), model=model))  # fmt: skip
        return out

    @bentoml.api(route="/ensemble")
    async def ensemble(
        self, images: list[Path], ensemble: str = "default", voting: str = "", top_k: int = 5
    ) -> list[EnsembleClassification]:
        """Classify each image with every member of an ensemble and vote (soft, weighted or hard)."""
        try:
            if ensemble not in CONFIG.ensembles:
                raise InputError(404, f"unknown ensemble '{ensemble}'; served ensembles: "
                                      f"{', '.join(CONFIG.ensembles) or 'none'}")  # fmt: skip
            spec = CONFIG.ensembles[ensemble]
            voting = voting or spec.voting
            if voting not in ("soft", "weighted", "hard"):
                raise InputError(400, f"voting must be soft, weighted or hard, got '{voting}'")
            if voting == "weighted" and spec.weights is None:
                raise InputError(400, f"ensemble '{ensemble}' has no weights in serving.yaml; use soft or hard")
            labels = self.models[spec.members[0]]["labels"]
            k = self._check_top_k(top_k, len(labels))
            # members share labels and input geometry, so one decode serves them all
            pixels = await self._pixels(images, spec.members[0])
        except InputError as e:
            return _error(e)
        REQUESTS.labels(model=f"ensemble:{ensemble}").inc()
        answers = await self._infer([{"models": spec.members, "pixels": p} for p in pixels])
        members = np.stack([[np.asarray(a[m]) for a in answers] for m in spec.members])  # [M, N, C]
        result = vote(members, voting, np.asarray(spec.weights) if spec.weights else None)
        out = []
        for n in range(members.shape[1]):
            best = int(result.winner[n])
            member_answers = []
            for m, name in enumerate(spec.members):
                j = int(members[m, n].argmax())
                member_answers.append(MemberAnswer(model=name, label=labels[j], index=j,
                                                   probability=float(members[m, n, j])))  # fmt: skip
            out.append(EnsembleClassification(
                label=labels[best], index=best, probability=float(result.scores[n, best]), voting=voting,
                agreement=float(result.agreement[n]),
                votes={labels[j]: int(v) for j, v in enumerate(result.votes[n]) if v},
                top_k=_ranked(labels, result.scores[n], result.order[n], k), members=member_answers,
            ))  # fmt: skip
        return out

    @bentoml.api(route="/models")
    def list_models(self) -> dict[str, t.Any]:
        """Every served model (tag, arch, labels, input size, metrics) and every ensemble."""
        ensembles = {name: {"members": e.members, "voting": e.voting, "weights": e.weights}
                     for name, e in CONFIG.ensembles.items()}  # fmt: skip
        return {"default_model": CONFIG.default_model, "models": self.models, "ensembles": ensembles}
