"""What a worker serves, under the HTTP routes: image bytes in, answers out.

    engine = Engine(config, graphs)                    # graphs: {model name: (store tag, runtime.Graph)}
    await engine.classify([png_bytes], "digits-resnet18", top_k=3)
    await engine.ensemble([jpeg_bytes], "default", voting="hard", top_k=5)

Each request's images are decoded once by the worker's preprocessing backend (service/preprocessing.py; on the host,
service/pixels.py: in threads or decoding processes, within the worker's decoding budget, service/budget.py), merged
with other requests' into one session call per model (service/batcher.py), and ranked or voted by service/models.py's
`rank`, the code `python -m service.predict` and the Ray actors rank with. The engine knows nothing of HTTP: a
client's mistake is an `InputError`, which the app (service/http/app.py) turns into a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing as t
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import metadata
from core.voting import VOTINGS
from service.batcher import Batcher, Overloaded
from service.budget import Budget
from service.config import ServingConfig
from service.decode import quoted
from service.errors import InputError
from service.metrics import BATCH_IMAGES, BATCH_RUN_IMAGES, INFERENCE_SECONDS, REQUESTS, WARMUP_SECONDS
from service.models import rank, top
from service.pixels import Image
from service.preprocessing import Backend, Host
from service.runtime import Graph


class Engine:
    """The served models' batchers, the decoding budget, the preprocessing backend and the three routes' answers."""

    def __init__(
        self,
        config: ServingConfig,
        graphs: dict[str, tuple[str, Graph]],
        backend: Backend | None = None,
    ) -> None:
        """backend: what makes the pixels (service/preprocessing.py; default: the host's, decoding in threads)."""
        self.config, self.limits = config, config.limits
        self.graphs = {name: graph for name, (_, graph) in graphs.items()}
        # one thread runs every session call: ONNX Runtime already uses all cores (or the GPU) for one call, and
        # calls that overlap would only compete for them
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        batching = config.batching
        self.backend = backend or Host()
        self.batchers = {
            name: Batcher(
                lambda parts, graph=graph: self.backend.run(graph, parts)["probabilities"],
                executor,
                batching.max_batch_size,
                batching.max_latency_ms,
                batching.max_wait_ms,
                _observer(name, graph),
            )
            for name, graph in self.graphs.items()
        }
        self.info = {name: _info(tag, graph) for name, (tag, graph) in graphs.items()}
        self.preprocess = {name: metadata.preprocess_of(graph.meta) for name, graph in self.graphs.items()}
        self.budget = Budget(self.limits.decode_budget_bytes, self.limits.decode_wait_ms)

    @staticmethod
    def warm(graphs: dict[str, tuple[str, Graph]]) -> None:
        """Every fixed batch size's first call, made now (before /readyz), its seconds in /metrics."""
        for name, (_, graph) in graphs.items():
            for size, seconds in graph.warm().items():
                WARMUP_SECONDS.labels(model=name, batch_size=str(size)).set(seconds)

    def warm_preprocessing(self) -> None:
        """The preprocessing backend's first pixels made now for each served geometry, before /readyz: the gpu
        backend's decoder and resize set up their state on the device at their first call."""
        for preprocess in {repr(sorted(p.items())): p for p in self.preprocess.values()}.values():
            self.backend.warm(preprocess)

    async def classify(self, images: t.Sequence[Image], model: str | None, top_k: int) -> list[dict[str, t.Any]]:
        """One answer per image, in order: the model's best label, its probability and the top k."""
        model = model or self.config.default_model
        if model not in self.graphs:
            raise InputError(404, f"unknown model {quoted(model)}; served models: {', '.join(self.graphs)}")
        labels = self.graphs[model].meta["labels"]
        k = _check_top_k(top_k, len(labels))
        [probabilities] = await self._probabilities(images, [model])
        REQUESTS.labels(model=model).inc()
        ranked = rank(probabilities[None])
        return [
            {"label": labels[int(ranked.order[n, 0])], "index": int(ranked.order[n, 0]),
             "probability": float(ranked.scores[n, ranked.order[n, 0]]),
             "top_k": top(labels, ranked.scores[n], ranked.order[n], k), "model": model}
            for n in range(len(probabilities))
        ]  # fmt: skip

    async def ensemble(
        self, images: t.Sequence[Image], ensemble: str, voting: str | None, top_k: int
    ) -> list[dict[str, t.Any]]:
        """One answer per image: the members' vote (soft, weighted or hard), with each member's own top-1."""
        if ensemble not in self.config.ensembles:
            raise InputError(404, f"unknown ensemble {quoted(ensemble)}; served ensembles: "
                                  f"{', '.join(self.config.ensembles) or 'none'}")  # fmt: skip
        spec = self.config.ensembles[ensemble]
        voting = voting or spec.voting
        if voting not in VOTINGS:
            raise InputError(400, f"voting must be soft, weighted or hard, got {quoted(voting)}")
        if voting == "weighted" and spec.weights is None:
            raise InputError(400, f"ensemble '{ensemble}' has no weights in serving.yaml; use soft or hard")
        labels = self.graphs[spec.members[0]].meta["labels"]
        k = _check_top_k(top_k, len(labels))
        members = np.stack(await self._probabilities(images, spec.members))  # [M, N, C]
        REQUESTS.labels(model=f"ensemble:{ensemble}").inc()
        result = rank(members, voting, np.asarray(spec.weights) if spec.weights else None)
        best_of_members = members.argmax(2)  # [M, N]
        out = []
        for n in range(members.shape[1]):
            best = int(result.order[n, 0])
            out.append({
                "label": labels[best], "index": best, "probability": float(result.scores[n, best]), "voting": voting,
                "agreement": float(result.agreement[n]),
                "votes": {labels[j]: int(v) for j, v in enumerate(result.votes[n]) if v},
                "top_k": top(labels, result.scores[n], result.order[n], k),
                "members": [{"model": name, "label": labels[j], "index": j, "probability": float(members[m, n, j])}
                            for m, name in enumerate(spec.members) for j in [int(best_of_members[m, n])]],
            })  # fmt: skip
        return out

    def models(self) -> dict[str, t.Any]:
        """Every served model (tag, arch, labels, input size, metrics) and every ensemble."""
        ensembles = {name: {"members": e.members, "voting": e.voting, "weights": e.weights}
                     for name, e in self.config.ensembles.items()}  # fmt: skip
        return {"default_model": self.config.default_model, "models": self.info, "ensembles": ensembles}

    async def _probabilities(self, images: t.Sequence[Image], models: list[str]) -> list[np.ndarray]:
        """float32 [N, C] per model: the images decoded once (members of an ensemble share their input geometry)
        and run through each model, batched with other requests."""
        if not images:
            raise InputError(400, "no images: send one or more files in the multipart field 'images', or one image "
                                  "as the whole body (Content-Type: image/png, image/jpeg, ...)")  # fmt: skip
        if len(images) > self.limits.max_images_per_request:
            raise InputError(413, f"{len(images)} images; the limit is {self.limits.max_images_per_request} a request")
        batchers = [self.batchers[m] for m in models]
        preprocess = self.preprocess[models[0]]
        with contextlib.ExitStack() as announced:  # the models wait for these images while they decode
            for batcher in batchers:
                announced.enter_context(batcher.incoming())
            decoded = await self.backend.batch(images, preprocess, self.limits, self.budget)
            futures = [batcher.submit(decoded) for batcher in batchers]
        try:
            return list(await asyncio.gather(*futures))
        except Overloaded as e:
            raise InputError(503, f"overloaded: {e}") from None


def _check_top_k(top_k: int, classes: int) -> int:
    if top_k < 1:
        raise InputError(400, f"top_k must be at least 1, got {top_k}")
    return min(top_k, classes)


def _info(tag: str, graph: Graph) -> dict[str, t.Any]:
    meta = graph.meta
    return {
        "tag": tag,
        "arch": meta["arch"],
        "labels": meta["labels"],
        "input_size": [meta["crop_size"], meta["crop_size"]],
        "resize_size": meta["resize_size"],
        "interpolation": meta["interpolation"],
        "precision": meta.get("precision", "fp32"),
        "metrics": meta.get("metrics", {}),
        "provider": graph.provider,
        "batch_sizes": graph.sizes,
    }


def _observer(name: str, graph: Graph) -> t.Callable[[int, float], None]:
    def observe(images: int, seconds: float) -> None:
        BATCH_IMAGES.labels(model=name).observe(images)
        BATCH_RUN_IMAGES.labels(model=name).observe(graph.run_size(images))
        INFERENCE_SECONDS.labels(model=name).observe(seconds)

    return observe
