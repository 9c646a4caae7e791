"""BentoML's request timeout (`traffic.timeout`), with a timer that does not outlive its request.

BentoML's `TimeoutMiddleware` (1.4) starts a `loop.call_later(timeout, ...)` timer for every request
and never cancels it. An asyncio timer keeps a copy of the context it was started in, and by then
the outer middlewares have put the request's tracing span and more into it. So every request's
objects stayed alive for the whole timeout (60 s here) after it was answered. Under load that held
about 250,000 objects at once. Each full garbage collection walked them, in pauses that grew through a
run and set the soak's p99 (measured: bench/README.md, 'Soak').

`install()` replaces the middleware's `__call__` with one that behaves the same (504 after the
timeout) but starts its timer in an empty context and cancels it when the request ends.

Upstream (bentoml 1.4.40): `bentoml/_internal/server/http/traffic.py`, `TimeoutMiddleware.__call__`
calls `loop.call_later(self.timeout, self._set_timer_out, waiter)` and drops the handle; the class is
added to every service's app by `bentoml/_internal/server/base_app.py`, `BaseAppFactory.middlewares`
(`Middleware(TimeoutMiddleware, timeout=self.timeout)`), which `_bentoml_impl/server/app.py`,
`ServiceAppFactory.middlewares` extends. The replacement uses the middleware's `app`, `timeout` and
`_set_timer_out(waiter)`; `check()` tries each of them, and that BentoML still installs this class, before
`install()` patches it (service/patches.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
import typing as t

from bentoml._internal.server import base_app
from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from service import patches


async def _call(self: traffic.TimeoutMiddleware, scope: dict, receive: t.Callable, send: t.Callable) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

    async def _send(message: dict) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send))
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await response(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


@patches.checks("service/timeout.py")
def check() -> None:
    """The installed bentoml still has the TimeoutMiddleware that `_call` was written for."""
    middleware = traffic.TimeoutMiddleware
    # the app factory adds exactly this class, so patching it reaches every request
    factory = types.SimpleNamespace(timeout=7, max_concurrency=None)
    added = [(m.cls, m.kwargs) for m in base_app.BaseAppFactory.middlewares.fget(factory)]
    if (middleware, {"timeout": 7}) not in added:
        raise patches.mismatch("service/timeout.py", f"BaseAppFactory.middlewares adds {added}, not TimeoutMiddleware")
    app = object()
    instance = middleware(app, timeout=7)
    if instance.app is not app or instance.timeout != 7:
        raise patches.mismatch("service/timeout.py", "TimeoutMiddleware(app, timeout) keeps no .app and .timeout")
    loop = asyncio.new_event_loop()
    try:
        waiter = loop.create_future()
        instance._set_timer_out(waiter)
        if not (waiter.done() and isinstance(waiter.exception(), TimeoutError)):
            what = "TimeoutMiddleware._set_timer_out(waiter) does not fail the waiter with TimeoutError"
            raise patches.mismatch("service/timeout.py", what)
    finally:
        loop.close()


def install() -> None:
    """Check the middleware has the expected shape (exit 2 in one line if not), then patch it."""
    patches.guard(check)
    traffic.TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
