"""BentoML's request timeout middleware as the service installs it, run on a real event loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service import timeout

REQUEST_STATE: contextvars.ContextVar = contextvars.ContextVar("request_state")


class State:
    """Stands for what outer middlewares keep in a request's context (a tracing span, for one)."""


async def app(scope, receive, send) -> None:
    if scope.get("hang"):  # a request nothing but the timeout ends: no race between a sleep and the timer
        await asyncio.Event().wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def serve(middleware: TimeoutMiddleware, hang: bool = False) -> tuple[list[dict], weakref.ref]:
    """One request whose context holds a State, as BentoML's outer middlewares' would."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    state = State()
    REQUEST_STATE.set(state)
    await middleware({"type": "http", "hang": hang}, receive, send)
    return sent, weakref.ref(state)


def test_an_answered_request_leaves_nothing_behind_and_a_slow_one_gets_504():
    timeout.install()
    middleware = TimeoutMiddleware(app, timeout=60)

    async def main():
        # each request in a task of its own, as uvicorn runs them: its context is a copy
        sent, state = await asyncio.get_running_loop().create_task(serve(middleware))
        await asyncio.sleep(0)
        gc.collect()
        alive = state() is not None
        live_timers = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        slow, _ = await asyncio.get_running_loop().create_task(serve(TimeoutMiddleware(app, timeout=0.1), hang=True))
        return sent, alive, live_timers, slow

    sent, alive, live_timers, slow = asyncio.run(main())
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
    # BentoML's own middleware keeps a 60-s timer, and with it this request's context, alive
    assert not alive, "the answered request's context is still referenced"
    assert live_timers == []
    assert slow[0]["status"] == 504 and b"0.1 seconds" in slow[1]["body"]
