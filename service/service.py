"""The BentoML service: `/classify`, `/ensemble`, `/models` over the graphs named in serving.yaml.

    bentoml serve                                   # from the repository root (bentofile.yaml)
    SERVING_CONFIG=other.yaml bentoml serve
    curl -F images=@digit.png http://localhost:3000/classify
    curl --data-binary @digit.png -H 'Content-Type: image/png' 'http://localhost:3000/classify?top_k=3'

BentoML runs the worker processes, packs the Bento and answers /livez, /readyz and /metrics; the routes are the
app of service/http/app.py, mounted with `@bentoml.asgi_app`. Each worker loads its graphs into the engine
(service/engine.py), which decodes images off the event loop (in threads, or in decoding processes:
`decoding.processes`) and merges concurrent requests into one ONNX Runtime call per model. On a GPU each call runs
at one of a few fixed batch sizes, every one warmed before /readyz answers 200 (service/runtime.py).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import bentoml

from core.cores import session_threads, usable_cores
from core.metadata import MODEL_FILE
from service import config as serving_config
from service import connections, gpus, packed, port, preprocessing, runtime, stored, timeout
from service.decoders import DecodingProcesses
from service.engine import Engine
from service.http import app, keys
from service.runtime import Graph

# Before anything starts, each one line on stderr and exit status 2: a bad config; and where `bentoml serve` or
# `bentoml build` imports the service (not in its workers, nor a plain import, which needs no model store) a
# model missing from the store, an ensemble whose members differ in labels or input size, a graph that does not
# open, lacks this project's metadata or cannot run on the configured device, `preprocessing: gpu` where it cannot
# run (service/preprocessing.py), a port in use.
# In a Bento the config is the one packed into it (service/packed.py).
CONFIG = packed.load_or_exit()
NAMES = [serving_config.model_name(tag) for tag in CONFIG.models]
COMMAND = port.bentoml_command()  # ("serve" | "build", args) in the process that serves or packs; else None
# `bentoml serve` refuses a keys file it cannot use; `bentoml build` needs none (the Secret is mounted where it runs)
KEYS = keys.keys_or_exit(CONFIG.auth, starting=COMMAND is not None and COMMAND[0] == "serve") if CONFIG.auth else None
TAGS = list(CONFIG.models)  # as the config names them; the versions found, where the store was checked
if COMMAND is not None:
    # `bentoml build` may pack a GPU Bento on a machine without one: there only the graphs are checked, on the CPU
    device = CONFIG.device if COMMAND[0] == "serve" else "cpu"
    if COMMAND[0] == "serve":  # and a Bento that preprocesses on the GPU too
        preprocessing.choose_or_exit(CONFIG)
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
# the most open connections a worker holds: checked against the file limit where the server runs
OPEN_CAP = connections.max_open_or_exit(CONFIG.connections.max_open) if SERVING_HERE else None
connections.install(CONFIG.connections.header_timeout_s, CONFIG.connections.drain_s, OPEN_CAP)
timeout.install()  # BentoML's request timeout, without holding each request's objects for its length

DESCRIPTION = """Image classification with models fine-tuned and exported by this project: POST images to /classify
(one model) or /ensemble (members voting), as multipart parts named `images` or one image as the whole body; GET
/models lists what is served. Errors are JSON `{"error": "..."}` naming the field or image at fault."""
APP = app.build(CONFIG, DESCRIPTION)

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


# BentoML's tracing middleware (opentelemetry.instrumentation.asgi, added for every request by
# _bentoml_impl/server/app.py, `ServiceAppFactory.middlewares`) took about a fifth of the event loop on 32x32
# uploads (bench/README.md): the routes get no span unless serving.yaml asks for tracing.
ROUTES = ["/classify", "/ensemble", "/models"]


@bentoml.service(
    name="classifier",
    workers=WORKERS,
    traffic={"timeout": 60},
    backlog=CONFIG.connections.backlog,
    resources={"gpu": len(GPUS)} if GPUS else {"gpu": 1} if CONFIG.device == "cuda" else {},
    logging={"access": {"enabled": CONFIG.observability.access_log}},
    tracing={} if CONFIG.observability.tracing else {"excluded_urls": ROUTES},
)
@bentoml.asgi_app(APP, path="/")
class Classifier(_StoredModels):
    """Loads the served graphs into the engine the routes call, once per worker."""

    @stored.on_failure
    def __init__(self) -> None:
        # several workers share the cores (those a container's CPU limit allows): each session gets its share
        cores = usable_cores()
        cpu_threads = session_threads(WORKERS)
        gpu = gpus.of_worker(GPUS, bentoml.server_context.worker_index) if GPUS else 0
        sizes = runtime.batch_sizes(CONFIG, runtime.uses_gpu(CONFIG.device))
        graphs = {}
        for i, name in enumerate(NAMES):
            entry = _stored(i)
            path = Path(entry.path_of(MODEL_FILE))
            try:
                graphs[name] = (str(entry.tag), Graph(path, CONFIG.device, cpu_threads, sizes, CONFIG.cuda, gpu))
            except Exception as e:
                raise RuntimeError(f"cannot load model '{entry.tag}' from {path}: {e}") from e
        Engine.warm(graphs)
        chosen = preprocessing.choose(CONFIG)
        # the gpu backend decodes in the worker's threads: decoding processes would only idle beside it
        processes = gpus.decode_processes(CONFIG, WORKERS, cores) if chosen == "host" else 0
        backend = preprocessing.backend(chosen, DecodingProcesses(processes, CONFIG.limits) if processes else None, gpu)
        APP.state.engine = Engine(CONFIG, graphs, backend)
        APP.state.engine.warm_preprocessing()
        # on stderr: BentoML's server logging drops INFO lines of loggers other than its own
        graph = next(iter(graphs.values()))[1]
        threads = graph.cpu_threads or "one per core"
        where = f"GPU {gpu} ({graph.provider})" if GPUS else f"the CPU (session threads: {threads})"
        print(f"worker {bentoml.server_context.worker_index} of {WORKERS}: sessions on {where}, decoding in "
              f"{processes} processes", file=sys.stderr, flush=True)  # fmt: skip
        # what start-up allocated (about 120,000 objects: BentoML, pydantic schemas, ONNX Runtime) stays
        # for the life of the process; left in the collector's oldest generation, each full collection
        # walked all of it and stalled the event loop (measured with gc.callbacks), which set the open-loop
        # p99 at half the maximum rate (bench/README.md, 'Digits on the CPU')
        gc.freeze()


# the outermost first: a request without a valid key is refused before anything else looks at it (a stopping
# worker's /readyz, which needs no key, before that)
Classifier.add_asgi_middleware(connections.DrainMiddleware)
if CONFIG.auth is not None:
    Classifier.add_asgi_middleware(keys.KeysMiddleware, auth=CONFIG.auth, keys=KEYS)
