"""The in-process batcher on a real event loop and a real executor thread (no server needed), without
racing the clock.

The batched callable is a fake model that holds each call until the test releases it. While call k is
held, whatever the test submits is queued, so the test knows exactly which requests must make up call
k+1 when it lets the model go. Each row of an answer says (the image's pixel value, the call it ran in,
its row in that call), so a test sees which requests shared a call and that every caller got its own
rows in order. Settings a test does not exercise are out of reach (`FOREVER_MS`), so no answer depends
on how fast the machine is. No test asserts a duration or how threads were scheduled; the one clock
read (the latency test) only makes sure a request is older than its bound before the model frees up.
`GUARD` turns a batcher that waits forever (a regression) into a failure instead of a hung run.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import Batcher, Overloaded

GUARD = 60.0  # seconds; a passing test needs milliseconds, so only a batcher that never answers gets here
FOREVER_MS = 3_600_000  # a max_wait_ms or max_latency_ms no test run reaches


class HeldModel:
    """uint8 [N, 2, 2, 3] -> float32 [N, 3]: (pixel value, call number from 1, row in the call) per image.

    Each call is recorded when it starts, then blocks until the test has released that many calls.
    `failures`: how many calls, the first ones, raise `error` as a failing ONNX Runtime session would."""

    def __init__(self) -> None:
        self.failures = 0
        self.error, self.error_type = "session failed", RuntimeError
        self.calls: list[list[int]] = []  # the pixel values each call received, in row order
        self.released = 0
        self.changed = threading.Condition()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self.changed:
            self.calls.append(pixels[:, 0, 0, 0].tolist())
            number = len(self.calls)
            self.changed.notify_all()
            if not self.changed.wait_for(lambda: self.released >= number, GUARD):
                raise RuntimeError(f"call {number} was never released")
        if number <= self.failures:
            raise self.error_type(self.error)
        return np.stack([pixels[:, 0, 0, 0], np.full(len(pixels), number), np.arange(len(pixels))], 1).astype(
            np.float32
        )

    def release(self, calls: int = 1) -> None:
        with self.changed:
            self.released += calls
            self.changed.notify_all()

    def release_all(self) -> None:
        self.release(sys.maxsize)

    async def running(self, number: int) -> None:
        """Returns once call `number` has started: until released, the model is busy with it."""

        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: len(self.calls) >= number, GUARD)

        assert await asyncio.to_thread(wait), f"call {number} never started; calls: {self.calls}"


@pytest.fixture
def model():
    held = HeldModel()
    yield held
    held.release_all()  # a test that failed half-way must not leave the executor thread blocked


def images(*values: int) -> np.ndarray:
    """One 2x2 image per value, every pixel that value: a request whose images can be told apart."""
    return np.array(values, np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)


def batcher(model: HeldModel, **settings) -> Batcher:
    # no shedding and no waiting unless a test asks: a slow machine cannot change which requests share a call
    settings = {"max_batch_size": 64, "max_latency_ms": FOREVER_MS, "max_wait_ms": FOREVER_MS, **settings}
    return Batcher(lambda parts: model(np.concatenate(parts)), ThreadPoolExecutor(1), **settings)


def run(test) -> object:
    return asyncio.run(asyncio.wait_for(test, GUARD))


def rows(answers: list[np.ndarray]) -> list[list[tuple[int, int, int]]]:
    """Each answer as (pixel value, call, row in the call) per image."""
    return [[tuple(int(x) for x in row) for row in answer] for answer in answers]


def test_requests_queued_while_the_model_is_busy_make_up_exactly_the_next_call(model):
    observed = []

    async def main():
        b = batcher(model, observe=lambda images, seconds: observed.append(images))
        first = b.submit(images(1))  # nothing else queued or announced: it runs alone, at once
        await model.running(1)
        queued = [b.submit(images(*v)) for v in ((2,), (3, 4), (5,))]  # the model is held: these must wait
        model.release_all()
        return await asyncio.gather(first, *queued)

    answers = run(main())
    assert model.calls == [[1], [2, 3, 4, 5]]
    assert observed == [1, 4]  # what /metrics' inference_batch_images histogram is told: images, not requests
    # every caller gets its own rows, in its own order
    assert rows(answers) == [[(1, 1, 0)], [(2, 2, 0)], [(3, 2, 1), (4, 2, 2)], [(5, 2, 3)]]


def test_max_batch_size_takes_whole_requests_in_order_and_overflow_goes_to_the_next_call(model):
    async def main():
        b = batcher(model, max_batch_size=4)
        first = b.submit(images(0))
        await model.running(1)
        a, bb, c = (b.submit(images(*v)) for v in ((1, 2, 3), (4, 5), (6, 7)))
        model.release(1)  # call 2 takes a; b would overflow it, and c may not jump ahead of b
        await model.running(2)
        d, e = (b.submit(images(*v)) for v in ((8, 9, 10), tuple(range(11, 17))))  # queued behind b and c
        model.release_all()
        return await asyncio.gather(first, a, bb, c, d, e)

    answers = run(main())
    # 3 (+2 would be 5); 2+2 fills the batch exactly; 3 (+6 would be 9); 6 is over the bound: it runs alone
    assert model.calls == [[0], [1, 2, 3], [4, 5, 6, 7], [8, 9, 10], list(range(11, 17))]
    assert [[value for value, _, _ in answer] for answer in rows(answers)] == [
        [0], [1, 2, 3], [4, 5], [6, 7], [8, 9, 10], list(range(11, 17))
    ]  # fmt: skip
    assert [{call for _, call, _ in answer} for answer in rows(answers)] == [{1}, {2}, {3}, {3}, {4}, {5}]


def test_a_request_older_than_max_latency_is_refused_and_never_reaches_the_model(model):
    async def main():
        b = batcher(model)
        first = b.submit(images(1))
        await model.running(1)
        # the bound is lowered only now that call 1 holds the model, so a slow start cannot shed `first`
        b.max_latency = 0.001
        late = [b.submit(images(2)), b.submit(images(3, 4))]
        queued = time.perf_counter()
        while time.perf_counter() - queued <= 2 * b.max_latency:  # certain: both are past the bound
            await asyncio.sleep(b.max_latency)
        model.release_all()
        served = await first
        refusals = await asyncio.gather(*late, return_exceptions=True)
        b.max_latency = FOREVER_MS / 1000
        again = await b(images(5))  # the drain loop that shed them ended cleanly; a new request is served
        return served, refusals, again

    served, refusals, again = run(main())
    assert rows([served, again]) == [[(1, 1, 0)], [(5, 2, 0)]]
    assert model.calls == [[1], [5]]  # the refused requests never reached the model
    assert all(isinstance(r, Overloaded) and "batching.max_latency_ms" in str(r) for r in refusals), refusals


def test_a_free_model_waits_for_an_announced_request_and_runs_it_with_the_queued_one(model):
    """As the service uses it: a request enters `incoming()` before decoding and submits inside it."""

    async def main():
        b = batcher(model)  # max_wait_ms out of reach: only the announced request's arrival ends the wait
        model.release_all()
        with b.incoming():  # request 2 is still decoding
            with b.incoming():  # request 1 decoded: queued while request 2 is announced
                first = b.submit(images(1))
            for _ in range(20):  # the drain loop runs now; a batcher that did not wait would call the model
                await asyncio.sleep(0)
            waited = not first.done()
            second = b.submit(images(2))
        return waited, await asyncio.gather(first, second)

    waited, answers = run(main())
    assert waited
    assert model.calls == [[1, 2]]
    assert rows(answers) == [[(1, 1, 0)], [(2, 1, 1)]]


def test_a_request_that_leaves_without_submitting_ends_the_wait(model):
    """An announced request whose upload is refused never submits; the model must not wait for it."""

    async def main():
        b = batcher(model)
        model.release_all()
        with b.incoming():  # request 2 is announced; its upload will turn out to be bad
            first = b.submit(images(1))  # request 1, decoded: the model waits for request 2
            for _ in range(20):
                await asyncio.sleep(0)
            waited = not first.done()
        # request 2 left without submitting; max_wait is out of reach, so only its leaving can end the wait
        return waited, await first

    waited, answer = run(main())
    assert waited and rows([answer]) == [[(1, 1, 0)]]
    assert model.calls == [[1]]


def test_the_wait_for_announced_requests_ends_at_max_wait(model):
    async def main():
        b = batcher(model, max_wait_ms=1)
        model.release_all()
        with b.incoming():  # announced, and never submits while the test runs
            alone = await b(images(1))  # runs once max_wait has passed (GUARD fails a batcher that waits on)
            later = await b(images(2))
        return alone, later

    alone, later = run(main())
    assert model.calls == [[1], [2]]
    assert rows([alone, later]) == [[(1, 1, 0)], [(2, 2, 0)]]


def test_a_full_batch_runs_without_waiting_for_announced_requests(model):
    async def main():
        b = batcher(model, max_batch_size=3)  # max_wait out of reach: only a full batch ends the wait
        model.release_all()
        with b.incoming():  # announced, and never submits while the test runs
            queued = [b.submit(images(1)), b.submit(images(2, 3))]  # 3 images: the batch is full
            return await asyncio.gather(*queued)

    answers = run(main())
    assert model.calls == [[1, 2, 3]]
    assert rows(answers) == [[(1, 1, 0)], [(2, 1, 1), (3, 1, 2)]]


def test_a_session_error_reaches_every_caller_in_its_batch_and_the_same_batcher_serves_again(model):
    async def main():
        model.failures = 1
        b = batcher(model)
        failed = [b.submit(images(v)) for v in (1, 2)]  # queued before the drain loop runs: one call, which fails
        await model.running(1)
        during = b.submit(images(3))  # queued while the failing call runs: the same drain loop must go on
        model.release_all()
        results = await asyncio.gather(*failed, return_exceptions=True)
        served = await during
        after = await b(images(4))  # and a request after the queue had emptied
        return results, served, after

    results, served, after = run(main())
    assert all(isinstance(r, RuntimeError) and "session failed" in str(r) for r in results), results
    assert model.calls == [[1, 2], [3], [4]]
    assert rows([served, after]) == [[(3, 2, 0)], [(4, 3, 0)]]


def _onnxruntime_error() -> type[Exception]:
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    return RuntimeException


@pytest.mark.parametrize("kind", ["session call", "allocation"])
def test_a_device_out_of_memory_is_overloaded_for_its_batch_and_the_batcher_serves_again(model, kind):
    """The error a CUDA session raises when the GPU has no memory left (as 12 workers of ResNet-50 on one H200
    did) reaches the callers as Overloaded, which the service answers 503, not as the session's RuntimeError; so does
    ONNX Runtime's own exception type, which its allocations raise."""

    async def main():
        model.failures = 1
        model.error_type = RuntimeError if kind == "session call" else _onnxruntime_error()
        model.error = (
            "/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:146 CudaCall CUDA failure 2: out of "
            "memory ; GPU=0 ; expr=cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);"
        )
        b = batcher(model)
        failed = [b.submit(images(v)) for v in (1, 2)]
        model.release_all()
        results = await asyncio.gather(*failed, return_exceptions=True)
        return results, await b(images(3))

    results, after = run(main())
    assert all(isinstance(r, Overloaded) and "ran out of memory running 2 images" in str(r) for r in results), results
    assert rows([after]) == [[(3, 2, 0)]]
