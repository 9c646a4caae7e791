"""Adaptive batching inside the serving process: concurrent requests for one model share a session call.

While a batch runs, new requests queue; when the model is free again, everything queued (up to
`max_batch_size` images, whole requests only) goes in the next call. Requests announce themselves while
their uploads are still being decoded (`incoming`), and a free model waits for those, up to
`max_wait_ms`, before it runs what it has: on a small model decoding takes longer than inference, so
without the wait every request would arrive to an idle model and run alone. A lone request (nothing
else decoding) runs at once, and under load the batch grows with the traffic.

Why here and not BentoML's dispatcher: BentoML batches only calls that cross a service boundary, that
is a second worker process. On a 2-core machine that process's request path (an HTTP hop, pickling the
pixels, its own event loop) took more CPU than the model (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing as t
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class Overloaded(Exception):
    """A request waited longer than `max_latency_ms` for its batch to start, or the device had no memory for it."""


def _out_of_memory(error: Exception) -> bool:
    """ONNX Runtime's words for a device that has no memory left (CUDA's cudaErrorMemoryAllocation, "CUDA failure
    2: out of memory", or its arena's "Failed to allocate memory"): the server is over capacity (too many workers
    or batch sizes for the GPU; bench/README.md, 'On a GPU'), not broken, so the caller gets 503 as when overloaded
    rather than a 500 and a traceback. Read from the text whatever the type: a session call bound with I/O binding
    raises RuntimeError, while ONNX Runtime's allocations (the gpu backend's input buffer, service/device_batch.py)
    raise its own exception types, which derive from Exception alone."""
    text = str(error).lower()
    return "out of memory" in text or "failed to allocate memory" in text


@dataclass
class _Pending:
    pixels: t.Sized  # a request's n images: uint8 [n, H, W, 3], or what the preprocessing backend made them into
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """`await batcher(pixels)` -> probabilities for those images, run in batches with other callers'.

    run: the batched session call, the requests' pixels in order (each uint8 [n, H, W, 3], or a backend's own
    sequence of n crops: service/preprocessing.py) -> float32 [N, C]; it runs on `executor`, so one single-thread
    executor shared by every model keeps ONNX Runtime calls from competing for cores, and the requests' pixels are
    joined there, off the event loop.
    observe(images, seconds) is told the size and duration of each call (the /metrics histograms).

        with batcher.incoming():          # while the request's uploads decode
            pixels = await decode(...)
            future = batcher.submit(pixels)
        probabilities = await future
    """

    def __init__(
        self,
        run: t.Callable[[list[t.Any]], np.ndarray],
        executor: Executor,
        max_batch_size: int,
        max_latency_ms: float,
        max_wait_ms: float,
        observe: t.Callable[[int, float], None] = lambda images, seconds: None,
    ):
        self.run, self.executor, self.observe = run, executor, observe
        self.max_batch_size, self.max_latency, self.max_wait = max_batch_size, max_latency_ms / 1000, max_wait_ms / 1000
        self.queue: deque[_Pending] = deque()
        self.worker: asyncio.Task | None = None
        self.decoding = 0  # requests inside `incoming()` that have not submitted yet
        self.changed = asyncio.Event()

    @contextlib.contextmanager
    def incoming(self) -> t.Iterator[None]:
        """Marks a request on its way: a free model waits (up to max_wait_ms) for it to `submit`."""
        self.decoding += 1
        try:
            yield
        finally:
            self.decoding -= 1
            self.changed.set()

    def submit(self, pixels: t.Sized) -> asyncio.Future:
        """Queues a request's n images; the future gets float32 [n, C] (or Overloaded, or the session's error).
        Not a coroutine, so that inside `incoming()` the request is queued before it stops counting as decoding."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(pixels, future))
        self.changed.set()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return future

    async def __call__(self, pixels: t.Sized) -> np.ndarray:
        return await self.submit(pixels)

    async def _wait_for_decoding(self) -> None:
        """While requests are still decoding and the batch is not full, wait for them, up to max_wait
        after the oldest queued request arrived."""
        deadline = self.queue[0].queued + self.max_wait
        while self.decoding and sum(len(p.pixels) for p in self.queue) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self.changed.clear()
            # asyncio.wait_for raises the builtin TimeoutError from Python 3.11 on (the project's minimum);
            # on 3.10 it was asyncio.TimeoutError, which this would not catch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests in order while they fit; a request larger than the bound runs
        alone rather than being split. Requests that waited past the latency bound are refused."""
        batch: list[_Pending] = []
        images = 0
        now = time.perf_counter()
        while self.queue:
            head = self.queue[0]
            if now - head.queued > self.max_latency:
                self.queue.popleft()
                if not head.future.done():
                    head.future.set_exception(Overloaded(
                        f"waited {1000 * (now - head.queued):.0f} ms for the model; the bound is "
                        f"{1000 * self.max_latency:.0f} ms (batching.max_latency_ms)"
                    ))  # fmt: skip
                continue
            if batch and images + len(head.pixels) > self.max_batch_size:
                break
            batch.append(self.queue.popleft())
            images += len(head.pixels)
        return [p for p in batch if not p.future.done()]  # a caller that went away needs no answer

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            await self._wait_for_decoding()
            batch = self._take()
            if not batch:
                continue
            images = sum(len(p.pixels) for p in batch)
            start = time.perf_counter()
            try:
                probabilities = await loop.run_in_executor(self.executor, self.run, [p.pixels for p in batch])
            except Exception as e:  # the session failed: every caller in the batch gets the error
                if _out_of_memory(e):
                    e = Overloaded(f"the device ran out of memory running {images} images; retry later")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.observe(images, time.perf_counter() - start)
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(probabilities[offset : offset + len(p.pixels)])
                offset += len(p.pixels)
