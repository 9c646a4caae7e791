"""The in-process batcher on a real event loop and a real executor thread (no server needed).

The batched call is a small numpy function that records the batch sizes it was given, so each test
sees exactly which requests shared a call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import Batcher, Overloaded
from service.config import BATCHING


class Model:
    """uint8 [N, 2, 2, 3] -> [N, 2]: (mean pixel, N); each call takes `seconds` and is recorded."""

    def __init__(self, seconds: float = 0.0, failures: int = 0):
        """`failures`: how many calls, the first ones, raise as a failing ONNX Runtime session would."""
        self.seconds, self.failures, self.calls = seconds, failures, []
        self.running = threading.Event()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.running.set()
        self.calls.append(len(pixels))
        time.sleep(self.seconds)
        if len(self.calls) <= self.failures:
            raise RuntimeError("session failed")
        return np.stack([pixels.reshape(len(pixels), -1).mean(1), np.full(len(pixels), len(pixels))], 1)


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, np.uint8)


def batcher(model: Model, **kw) -> Batcher:
    # the service's defaults (BATCHING also holds settings of the session, not of the batcher), but no shedding
    defaults = {k: BATCHING[k] for k in ("max_batch_size", "max_latency_ms", "max_wait_ms")}
    settings = {**defaults, "max_latency_ms": 10_000, **kw}
    return Batcher(model, ThreadPoolExecutor(1), **settings)


def test_requests_that_queue_while_the_model_runs_share_the_next_call():
    async def main():
        model = Model(seconds=0.2)
        b = batcher(model)
        first = asyncio.ensure_future(b(images(1)))
        await asyncio.to_thread(model.running.wait)  # the first call is running
        rest = [b.submit(images(v, n)) for v, n in ((2, 1), (3, 2), (4, 1))]
        answers = await asyncio.gather(first, *rest)
        return model.calls, answers

    calls, answers = asyncio.run(main())
    assert calls == [1, 4]  # the lone first request ran at once; the three queued ones ran together
    # each caller gets its own rows, in order: the mean pixel is its value
    assert [a[:, 0].tolist() for a in answers] == [[1.0], [2.0], [3.0, 3.0], [4.0]]
    assert [a[:, 1].tolist() for a in answers] == [[1.0], [4.0], [4.0, 4.0], [4.0]]


def test_a_free_model_waits_for_requests_still_decoding_up_to_max_wait():
    async def main():
        model = Model()
        b = batcher(model, max_wait_ms=2_000)
        with b.incoming():  # a second request is still decoding when the first is queued
            first = b.submit(images(1))
            await asyncio.sleep(0.05)
            second = b.submit(images(2))
        together = await asyncio.gather(first, second)
        lone_wait = batcher(Model(), max_wait_ms=100)
        start = time.perf_counter()
        with lone_wait.incoming():  # decoding that never submits: the model stops waiting after max_wait
            alone = await lone_wait(images(3))
        return model.calls, together, alone, time.perf_counter() - start

    calls, together, alone, waited = asyncio.run(main())
    assert calls == [2]
    assert [a[0, 0] for a in together] == [1.0, 2.0]
    assert alone[0, 0] == 3.0 and 0.1 <= waited < 1.5


def test_batches_hold_whole_requests_up_to_max_batch_size():
    async def main():
        model = Model(seconds=0.1)
        b = batcher(model, max_batch_size=4)
        first = asyncio.ensure_future(b(images(0)))
        await asyncio.to_thread(model.running.wait)
        queued = [b.submit(images(v, n)) for v, n in ((1, 3), (2, 2), (3, 2), (4, 6))]
        await asyncio.gather(first, *queued)
        return model.calls

    # 3 fits, 3+2 would not; 2+2; a request of 6 over the bound runs alone rather than being split
    assert asyncio.run(main()) == [1, 3, 4, 6]


def test_a_request_queued_past_max_latency_is_refused_and_the_batcher_keeps_serving():
    async def main():
        model = Model(seconds=0.3)
        b = batcher(model, max_latency_ms=100)
        first = asyncio.ensure_future(b(images(1)))
        await asyncio.to_thread(model.running.wait)
        late = b.submit(images(2))
        ok = await first
        with pytest.raises(Overloaded, match="batching.max_latency_ms"):
            await late
        b.max_latency = 10.0
        again = await b(images(5))
        return ok, again, model.calls

    ok, again, calls = asyncio.run(main())
    assert ok[0, 0] == 1.0 and again[0, 0] == 5.0
    assert calls == [1, 1]  # the refused request never reached the model


def test_a_session_error_reaches_every_caller_in_its_batch_and_the_same_batcher_serves_again():
    async def main():
        model = Model(seconds=0.2, failures=1)
        b = batcher(model)
        failed = [asyncio.ensure_future(b(images(v))) for v in (1, 2)]  # one call of 2 images, which fails
        await asyncio.to_thread(model.running.wait)
        during = b.submit(images(3))  # queued while the failing call runs: the same drain loop must go on
        results = await asyncio.gather(*failed, return_exceptions=True)
        served = await asyncio.wait_for(during, 5)  # bounded: a dead drain loop would leave it waiting forever
        after = await asyncio.wait_for(b(images(4)), 5)  # and a request after the queue had emptied
        return results, served, after, model.calls

    results, served, after, calls = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "session failed" in str(r) for r in results), results
    assert served[:, 0].tolist() == [3.0] and after[:, 0].tolist() == [4.0]
    assert calls == [2, 1, 1]
