"""The routes: each reads its request (service/http/forms.py), asks the engine (service/engine.py) and answers JSON.

A refusal is raised as an `InputError` anywhere below a route and becomes its 4xx in one place
(service/http/app.py, `refused`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.engine import Engine
from service.errors import InputError
from service.http.forms import Field, Spec, parse

TOP_K = Field(int, 5, "how many of the most probable labels to return per image (at least 1; more than the "
                      "model's classes gives them all)")  # fmt: skip
CLASSIFY = Spec("/classify", {"top_k": TOP_K, "model": Field(str, None, "a served model's name (GET /models)")})
ENSEMBLE = Spec("/ensemble", {
    "ensemble": Field(str, "default", "an ensemble named in serving.yaml"),
    "voting": Field(str, None, "soft, weighted or hard (default: the ensemble's own)"),
    "top_k": TOP_K,
})  # fmt: skip
MODELS = Spec("/models", {}, images=False)


def engine(request: Request) -> Engine:
    found = request.app.state.engine
    if found is None:  # the worker is still starting (BentoML's /readyz answers 503 until it has)
        raise InputError(503, "the models are still loading; retry when /readyz answers 200")
    return found


async def classify(request: Request) -> Response:
    """Classify each image with one model."""
    parsed = await parse(request, CLASSIFY)
    values = parsed.values
    return JSONResponse(await engine(request).classify(parsed.images, values["model"], values["top_k"]))


async def ensemble(request: Request) -> Response:
    """Classify each image with every member of an ensemble and vote (soft, weighted or hard)."""
    parsed = await parse(request, ENSEMBLE)
    values = parsed.values
    answers = await engine(request).ensemble(parsed.images, values["ensemble"], values["voting"], values["top_k"])
    return JSONResponse(answers)


async def models(request: Request) -> Response:
    """Every served model (tag, arch, labels, input size, metrics) and every ensemble."""
    if request.method == "POST":  # what BentoML's routes took; nothing to read, but a field sent is a mistake
        await parse(request, MODELS)
    return JSONResponse(engine(request).models())
