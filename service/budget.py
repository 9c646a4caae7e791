"""A worker's memory budget for decoding: the bytes of decoded pixels and their intermediates in flight at once.

Before an image is decoded its cost is known from its header (service/decode.py, `cost_of`); it is decoded only
once that many bytes of `limits.decode_budget_bytes` are free. An image whose cost alone exceeds the budget is
refused (413). One that finds no room waits in line: whenever bytes are given back, the waiting images are let in
in the order they came, each that fits, so a request's images go before a later request's, and a small image passes
a large one that does not fit yet (an ordinary request is not held up behind an attack of large ones). A waiting
image is refused as busy (503) only once the budget has given nothing back for `limits.decode_wait_ms`: a queue that
moves is served, however long it is (one request of 64 images of 40 megapixels takes about 14 s on 2 cores, and
was answered 503 when the wait counted from the image's arrival, issue 31), and a worker whose decoding is stuck
says so.

The count is taken and given back from the decoding threads as well as the event loop (a lock guards it); only the
event loop waits.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import threading
import time
import typing as t

from service.errors import InputError

# glibc keeps freed memory in its arenas (a decoding thread's arena, or the heap, once its dynamic mmap threshold
# has grown past Pillow's 16 MB blocks), so a worker's RSS stayed at its peak after a large image; malloc_trim
# gives it back. Only after a large image: a trim walks the arenas.
TRIM_OVER = 64 * 2**20
try:
    _malloc_trim: t.Callable[[int], int] | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


class Budget:
    def __init__(self, capacity: int, wait_ms: int) -> None:
        self.capacity, self.wait_s = capacity, wait_ms / 1000
        self.used = 0
        self.last_freed = time.monotonic()  # when bytes were last given back: the queue's progress
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # the images waiting, in the order they came: their cost and the future `_admit` resolves once it holds it
        self._line: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def check(self, cost: int, part: str) -> None:
        """413 for an image that could never be decoded within the budget."""
        if cost > self.capacity:
            raise InputError(413, f"{part} needs {cost} bytes to decode; a worker decodes at most {self.capacity} "
                                  "bytes at once (limits.decode_budget_bytes): send a smaller image")  # fmt: skip

    def take(self, cost: int) -> bool:
        """Hold `cost` bytes if they are free now; never waits."""
        with self._lock:
            if self.used + cost > self.capacity:
                return False
            self.used += cost
            return True

    def give_back(self, cost: int, trim: bool = True) -> None:
        """Free `cost` bytes; `trim`: this process held them (not a decoding process)."""
        with self._lock:
            self.used -= cost
            self.last_freed = time.monotonic()
        if trim and cost > TRIM_OVER and _malloc_trim is not None:
            _malloc_trim(0)
        if self._loop is not None and self._line:
            self._loop.call_soon_threadsafe(self._admit)

    def _admit(self) -> None:
        """Let in each waiting image that fits, in the order they came (on the event loop)."""
        for entry in list(self._line):
            cost, admitted = entry
            if admitted.done():  # gave up waiting
                self._line.remove(entry)
            elif self.take(cost):
                self._line.remove(entry)
                admitted.set_result(None)

    async def wait_to_take(self, cost: int, part: str) -> None:
        """Hold `cost` bytes, waiting in line on the event loop for them; InputError(503) once the budget has given
        nothing back for `wait_s` while this image waited."""
        self.check(cost, part)
        self._loop = asyncio.get_running_loop()
        if not self._line and self.take(cost):
            return
        admitted: asyncio.Future[None] = self._loop.create_future()
        self._line.append((cost, admitted))
        self._admit()  # bytes may have come back between the take above and joining the line
        began = time.monotonic()
        try:
            while not admitted.done():
                left = max(began, self.last_freed) + self.wait_s - time.monotonic()
                if left <= 0:
                    raise InputError(503, f"busy: {part} needs {cost} bytes to decode and the worker's decoding "
                                          f"budget ({self.capacity} bytes, limits.decode_budget_bytes) gave nothing "
                                          f"back for {self.wait_s:g} s; retry later")  # fmt: skip
                await asyncio.wait([admitted], timeout=left)
        except BaseException:
            if admitted.done() and not admitted.cancelled():  # let in as it gave up: the bytes go back
                self.give_back(cost, trim=False)
            else:
                admitted.cancel()
            raise
