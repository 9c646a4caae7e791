"""The BentoML service: `/classify`, `/ensemble`, `/models` over the graphs named in serving.yaml.

    bentoml serve                                   # from the repository root (bentofile.yaml)
    SERVING_CONFIG=other.yaml bentoml serve
    curl -F images=@digit.png http://localhost:3000/classify

One process: `Classifier` takes HTTP requests, decodes and resizes uploads off the event loop (in threads,
or in a pool of decoding processes: `decoding.processes`), and hands the pixels to one `Batcher` per model
(service/batcher.py), which merges concurrent requests into one ONNX Runtime call on a thread of its own.
On a GPU each call runs at one of a few fixed batch sizes, every one warmed before /readyz answers 200
(service/runtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from pydantic import Field
from starlette.datastructures import UploadFile

from core import metadata
from core.cores import session_threads, usable_cores
from core.metadata import MODEL_FILE
from core.voting import vote
from service import auth, bodies, connections, docs_page, gpus, openapi, packed, port, runtime, stored, timeout
from service import config as serving_config
from service.answers import Classification, EnsembleClassification, MemberAnswer, answer, ranked
from service.batcher import Batcher, Overloaded
from service.budget import Budget
from service.decode import decoding_processes, quoted
from service.errors import ROUTE_STATUSES, InputError, refusal
from service.metrics import BATCH_IMAGES, BATCH_RUN_IMAGES, INFERENCE_SECONDS, REQUESTS, WARMUP_SECONDS
from service.pixels import pixels
from service.runtime import Graph
from service.upload import REFUSED, Form, Upload

# Before anything starts, each one line on stderr and exit status 2: a bad config; and where `bentoml serve` or
# `bentoml build` imports the service (not in its workers, nor a plain import, which needs no model store) a
# model missing from the store, an ensemble whose members differ in labels or input size, a graph that does not
# open, lacks this project's metadata or cannot run on the configured device, a port in use.
# In a Bento the config is the one packed into it (service/packed.py).
CONFIG = packed.load_or_exit()
NAMES = [serving_config.model_name(tag) for tag in CONFIG.models]
COMMAND = port.bentoml_command()  # ("serve" | "build", args) in the process that serves or packs; else None
# `bentoml serve` refuses a keys file it cannot use; `bentoml build` needs none (the Secret is mounted where it runs)
KEYS = auth.keys_or_exit(CONFIG.auth, starting=COMMAND is not None and COMMAND[0] == "serve") if CONFIG.auth else None
TAGS = list(CONFIG.models)  # as the config names them; the versions found, where the store was checked
if COMMAND is not None:
    # `bentoml build` may pack a GPU Bento on a machine without one: there only the graphs are checked, on the CPU
    device = CONFIG.device if COMMAND[0] == "serve" else "cpu"
    TAGS = [str(entry.tag) for entry in stored.load_or_exit(CONFIG, device).values()]
    packed.pin(dict(zip(NAMES, TAGS)))  # the versions `bentoml build` packs, and the Bento then serves
    port.check()
    if COMMAND[0] == "serve":
        stored.install()  # a worker that still cannot start stops the server, rather than restarting for ever
# `gpus`: the GPU ids, resolved where the server runs (`bentoml serve` and its workers; `bentoml build` may pack a
# GPU Bento on a machine without one); None without `gpus`
SERVING_HERE = (COMMAND is not None and COMMAND[0] == "serve") or bentoml.server_context.worker_index is not None
GPUS = gpus.ids_or_exit(CONFIG) if SERVING_HERE else None
WORKERS = gpus.workers(CONFIG, GPUS)
if GPUS and COMMAND is not None:
    gpus.leave_allocation_to_workers()
connections.install(CONFIG.connections.header_timeout_s, CONFIG.connections.drain_s)
timeout.install()  # BentoML's request timeout, without holding each request's objects for its length

logger = logging.getLogger("service")


class ClassifyInput(Form):
    images: list[Upload] = Field(description="the images: one multipart file part each, all named 'images'")
    top_k: int = Field(5, description="how many of the most probable labels to return per image (at least 1)")
    model: str = Field(CONFIG.default_model, description="a served model's name (the list: POST /models)")


class EnsembleInput(Form):
    images: list[Upload] = Field(description="the images: one multipart file part each, all named 'images'")
    ensemble: str = Field("default", description="an ensemble named in serving.yaml")
    voting: str = Field("", description="soft, weighted or hard; empty: the ensemble's own")
    top_k: int = Field(5, description="how many of the most probable labels to return per image (at least 1)")


class ModelsInput(Form):
    """No fields: any field sent is refused."""


# One BentoModel attribute per served model, so `bentoml build` packs them into the Bento
MODEL_REFS = [bentoml.models.BentoModel(tag) for tag in TAGS]
_StoredModels = type("_StoredModels", (), {f"model_{i}": ref for i, ref in enumerate(MODEL_REFS)})


def _stored(i: int) -> bentoml.Model:
    entry = MODEL_REFS[i].stored
    if entry is None:  # removed from the store since the import checked it
        raise RuntimeError(
            f"model '{CONFIG.models[i]}' is not in the BentoML model store; export it with --store {NAMES[i]}"
        )
    return entry


# The routes whose requests get no OpenTelemetry span unless serving.yaml asks for tracing: BentoML's tracing
# middleware (opentelemetry.instrumentation.asgi, added for every request by _bentoml_impl/server/app.py,
# `ServiceAppFactory.middlewares`) took about a fifth of the event loop on 32x32 uploads (bench/README.md).
ROUTES = tuple(ROUTE_STATUSES)


@bentoml.service(
    name="classifier",
    workers=WORKERS,
    traffic={"timeout": 60},
    resources={"gpu": len(GPUS)} if GPUS else {"gpu": 1} if CONFIG.device == "cuda" else {},
    logging={"access": {"enabled": CONFIG.observability.access_log}},
    tracing={} if CONFIG.observability.tracing else {"excluded_urls": list(ROUTES)},
)
class Classifier(_StoredModels):
    """Image classification with models fine-tuned and exported by this project: POST images to /classify
    (one model) or /ensemble (members voting); /models lists what is served. Errors are JSON
    `{"error": "..."}` naming the field or image at fault."""

    @stored.on_failure
    def __init__(self) -> None:
        # one thread runs every session call: ONNX Runtime already uses all cores (or the GPU) for one
        # call, and calls that overlap would only compete for them
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.model_info, self.preprocess, self.batchers = {}, {}, {}
        # several workers share the cores (those a container's CPU limit allows): each session gets its share
        cores = usable_cores()
        cpu_threads = session_threads(WORKERS)
        gpu = gpus.of_worker(GPUS, bentoml.server_context.worker_index) if GPUS else 0
        sizes = runtime.batch_sizes(CONFIG, runtime.uses_gpu(CONFIG.device))
        for i, name in enumerate(NAMES):
            # the model store entry's metadata (written by `python -m export --store`) says what it expects
            entry = _stored(i)
            meta = entry.info.metadata
            path = Path(entry.path_of(MODEL_FILE))
            try:
                graph = Graph(path, CONFIG.device, cpu_threads, sizes, CONFIG.cuda, gpu)
                warmed = graph.warm()
            except Exception as e:
                raise RuntimeError(f"cannot load model '{entry.tag}' from {path}: {e}") from e
            for size, seconds in warmed.items():
                WARMUP_SECONDS.labels(model=name, batch_size=str(size)).set(seconds)
            self.model_info[name] = {
                "tag": str(entry.tag),
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
            self.preprocess[name] = metadata.preprocess_of(meta)

            def observe(images: int, seconds: float, name: str = name, graph: Graph = graph) -> None:
                BATCH_IMAGES.labels(model=name).observe(images)
                BATCH_RUN_IMAGES.labels(model=name).observe(graph.run_size(images))
                INFERENCE_SECONDS.labels(model=name).observe(seconds)

            self.batchers[name] = Batcher(
                lambda pixels, graph=graph: graph.run(pixels)["probabilities"],
                executor,
                CONFIG.max_batch_size,
                CONFIG.max_latency_ms,
                CONFIG.max_wait_ms,
                observe,
            )
        self.limits = CONFIG.limits
        self.budget = Budget(CONFIG.limits.decode_budget_bytes, CONFIG.limits.decode_wait_ms)
        processes = gpus.decode_processes(CONFIG, WORKERS, cores)
        self.decoder = decoding_processes(processes)
        # on stderr: BentoML's server logging drops INFO lines of loggers other than its own
        threads = graph.cpu_threads or "one per core"
        where = f"GPU {gpu} ({graph.provider})" if GPUS else f"the CPU (session threads: {threads})"
        print(f"worker {bentoml.server_context.worker_index} of {WORKERS}: sessions on {where}, decoding in "
              f"{processes} processes", file=sys.stderr, flush=True)  # fmt: skip
        # what start-up allocated (about 120,000 objects: BentoML, pydantic schemas, ONNX Runtime) stays
        # for the life of the process; left in the collector's oldest generation, each full collection
        # walked all of it and stalled the event loop (measured with gc.callbacks), which set the open-loop
        # p99 at half the maximum rate (bench/README.md, 'Digits on the CPU')
        gc.freeze()

    async def _pixels(self, images: list[UploadFile], model: str) -> list[np.ndarray]:
        if not images:
            raise InputError(400, "no images: send one or more files in the multipart field 'images'")
        if len(images) > self.limits.max_images_per_request:
            raise InputError(413, f"{len(images)} images; the limit is {self.limits.max_images_per_request} a request")
        return await pixels(images, self.preprocess[model], self.limits, self.budget, self.decoder)

    async def _probabilities(self, images: list[UploadFile], models: list[str]) -> list[np.ndarray]:
        """float32 [N, C] per model: the uploads decoded once (members of an ensemble share their input
        geometry) and run through each model, batched with other requests."""
        batchers = [self.batchers[m] for m in models]
        with contextlib.ExitStack() as announced:  # the models wait for these images while they decode
            for batcher in batchers:
                announced.enter_context(batcher.incoming())
            pixels = np.stack(await self._pixels(images, models[0]))
            futures = [batcher.submit(pixels) for batcher in batchers]
        try:
            return list(await asyncio.gather(*futures))
        except Overloaded as e:
            raise InputError(503, f"overloaded: {e}") from None

    def _check_top_k(self, top_k: int, classes: int) -> int:
        if top_k < 1:
            raise InputError(400, f"top_k must be at least 1, got {top_k}")
        return min(top_k, classes)

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(
        self, images: list[Upload], top_k: int = 5, model: str = CONFIG.default_model
    ) -> list[Classification]:
        """Classify each uploaded image with one model."""
        if (refused := REFUSED.get()) is not None:
            return refusal(refused)
        try:
            if model not in self.model_info:
                raise InputError(404, f"unknown model {quoted(model)}; served models: {', '.join(NAMES)}")
            labels = self.model_info[model]["labels"]
            k = self._check_top_k(top_k, len(labels))
            [probabilities] = await self._probabilities(images, [model])
        except InputError as e:
            return refusal(e)
        REQUESTS.labels(model=model).inc()
        out = []
        for probs in probabilities:
            order = np.argsort(-probs, kind="stable")
            best = int(order[0])
            out.append(Classification(label=labels[best], index=best, probability=float(probs[best]),
                                      top_k=ranked(labels, probs, order, k), model=model))  # fmt: skip
        return answer(out)

    @bentoml.api(route="/ensemble", input_spec=EnsembleInput)
    async def ensemble(
        self, images: list[Upload], ensemble: str = "default", voting: str = "", top_k: int = 5
    ) -> list[EnsembleClassification]:
        """Classify each image with every member of an ensemble and vote (soft, weighted or hard)."""
        if (refused := REFUSED.get()) is not None:
            return refusal(refused)
        try:
            if ensemble not in CONFIG.ensembles:
                raise InputError(404, f"unknown ensemble {quoted(ensemble)}; served ensembles: "
                                      f"{', '.join(CONFIG.ensembles) or 'none'}")  # fmt: skip
            spec = CONFIG.ensembles[ensemble]
            voting = voting or spec.voting
            if voting not in ("soft", "weighted", "hard"):
                raise InputError(400, f"voting must be soft, weighted or hard, got {quoted(voting)}")
            if voting == "weighted" and spec.weights is None:
                raise InputError(400, f"ensemble '{ensemble}' has no weights in serving.yaml; use soft or hard")
            labels = self.model_info[spec.members[0]]["labels"]
            k = self._check_top_k(top_k, len(labels))
            members = np.stack(await self._probabilities(images, spec.members))  # [M, N, C]
        except InputError as e:
            return refusal(e)
        REQUESTS.labels(model=f"ensemble:{ensemble}").inc()
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
                top_k=ranked(labels, result.scores[n], result.order[n], k), members=member_answers,
            ))  # fmt: skip
        return answer(out)

    @bentoml.api(route="/models", input_spec=ModelsInput)
    def list_models(self) -> dict[str, t.Any]:
        """Every served model (tag, arch, labels, input size, metrics) and every ensemble."""
        if (refused := REFUSED.get()) is not None:
            return refusal(refused)
        ensembles = {name: {"members": e.members, "voting": e.voting, "weights": e.weights}
                     for name, e in CONFIG.ensembles.items()}  # fmt: skip
        return {"default_model": CONFIG.default_model, "models": self.model_info, "ensembles": ensembles}


openapi.document(Classifier, CONFIG.auth)
# the outermost first: a request without a valid key is refused before anything else looks at it (a stopping
# worker's /readyz, which needs no key, before that)
Classifier.add_asgi_middleware(connections.DrainMiddleware)
if CONFIG.auth is not None:
    Classifier.add_asgi_middleware(auth.KeysMiddleware, auth=CONFIG.auth, keys=KEYS)
Classifier.add_asgi_middleware(bodies.BodiesMiddleware, routes=ROUTES, limits=CONFIG.limits)
Classifier.add_asgi_middleware(docs_page.PageMiddleware)
