"""The service's HTTP app: the routes, the page and document, body bounds and the one place refusals become answers.

    app = build(config)                 # a Starlette app; service/service.py mounts it in the BentoML service
    app.state.engine = Engine(...)      # set by each worker once its models are loaded (503 before)

BentoML mounts it with its public `@bentoml.asgi_app` and keeps what it is good at: the worker processes, the model
store, Bentos and containers, /livez, /readyz and /metrics. The app owns its requests: a do-nothing route cost the
server 0.61 ms of CPU a request as a `@bentoml.api` method against 0.30 here, and BentoML's request parsing had to be
worked around for every client mistake (docs/serving.md, 'The request path'). Tests run it in-process (an ASGI
client, no server: tests/test_app.py).
"""

from __future__ import annotations

import json
import logging
import typing as t

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from service.config import ServingConfig
from service.errors import RETRY_AFTER_S, InputError
from service.http import log_limit, openapi, routes
from service.http.bodies import BodiesMiddleware
from service.http.page import page

logger = logging.getLogger("service")


def refused(request: Request, e: Exception, headers: dict[str, str] | None = None) -> Response:
    """Every refusal's answer: its status and `{"error": message}`, logged as one line, not a traceback, so that a
    client sending bad requests cannot flood the log."""
    assert isinstance(e, InputError)
    logger.info("refused with %d: %s %s: %s", e.status, request.method, request.url.path, e.message)
    if e.status == 503:  # a client, or a load balancer, may try again: say when
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    # one given before the body has all arrived closes its connection (BodiesMiddleware)
    return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)


def http_error(request: Request, e: Exception) -> Response:
    """Starlette's own refusals (a method a route does not take) in the same body."""
    assert isinstance(e, HTTPException)
    message = str(e.detail)
    if e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "POST")
        message = f"{request.url.path} takes {allowed}, not {request.method}"
    return refused(request, InputError(e.status_code, message), dict(e.headers or {}))


def failed(request: Request, e: Exception) -> Response:
    """A bug (never anything a client sent): the traceback in the log, the same body as every refusal. Starlette
    raises the exception on after this answer, so BentoML's server logs it too."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return JSONResponse({"error": "an unexpected error in the server (a bug); the server log has the traceback"}, 500)


def build(config: ServingConfig, description: str = "") -> Starlette:
    """The app for `config`; its `state.engine` is None until the worker sets it."""
    log_limit.install()  # a client's malformed bodies write at most a few WARNING lines a minute
    document = json.dumps(openapi.document(description, config.auth, config.limits)).encode()
    index = page("classifier").encode()

    async def docs(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def home(request: Request) -> Response:
        return HTMLResponse(index)

    app = Starlette(
        routes=[
            Route("/classify", routes.classify, methods=["POST"]),
            Route("/ensemble", routes.ensemble, methods=["POST"]),
            Route("/models", routes.models, methods=["GET", "POST"]),
            # before BentoML's own / and /docs.json: its router tries the mounted app's routes first
            Route("/", home, methods=["GET"]),
            Route("/docs.json", docs, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                t.cast(t.Any, BodiesMiddleware), limits=config.limits, body_timeout_s=config.connections.body_timeout_s
            )
        ],  # fmt: skip
        exception_handlers={InputError: refused, HTTPException: http_error, Exception: failed},
    )
    app.state.engine = None
    app.state.limits = config.limits  # a streamed form's file parts are bounded before the engine is there
    return app
