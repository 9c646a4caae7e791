"""BentoML's request timeout (`traffic.timeout`), with a timer that does not outlive its request.

BentoML's `TimeoutMiddleware` (1.4) starts a `loop.call_later(timeout, ...)` timer for every request
and never cancels it. An asyncio timer keeps a copy of the context it was started in, and by then
the outer middlewares have put the request's tracing span and more into it. So every request's
objects stayed alive for the whole timeout (60 s here) after it was answered. Under load that held
about 250,000 objects at once. Each full garbage collection walked them: 300-530 ms pauses that grew
through a 60-s run and set the soak's p99 (bench/README.md).

`install()` replaces the middleware's `__call__` with one that behaves the same (504 after the
timeout) but starts its timer in an empty context and cancels it when the request ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import typing as t

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


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
    except asyncio.TimeoutError:
        if fut.cancel():
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await response(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def install() -> None:
    traffic.TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
