"""A worker's memory budget for decoding: the bytes of decoded pixels and their intermediates in flight at once.

Before an image is decoded its cost is known from its header (service/decode.py, `cost_of`); it is decoded only
once that many bytes of `limits.decode_budget_bytes` are free. An image whose cost alone exceeds the budget is
refused (413); one that finds no room waits, up to `limits.decode_wait_ms`, for other images to finish, then the
request is refused as busy (503). Small images pass large ones that wait, so an ordinary request is not held up
behind an attack of large ones.

The count is taken and given back from the decoding threads as well as the event loop (a lock guards it); only the
event loop waits.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freed: asyncio.Event | None = None

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
        if trim and cost > TRIM_OVER and _malloc_trim is not None:
            _malloc_trim(0)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def wait_to_take(self, cost: int, part: str) -> None:
        """Hold `cost` bytes, waiting on the event loop for them; InputError(503) after `wait_s`."""
        self.check(cost, part)
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.wait_s
        while not self.take(cost):
            left = deadline - time.monotonic()
            if left <= 0:
                raise InputError(503, f"busy: {part} needs {cost} bytes to decode and the worker's decoding budget "
                                      f"({self.capacity} bytes, limits.decode_budget_bytes) stayed full for "
                                      f"{self.wait_s:g} s; retry later")  # fmt: skip
            if self._freed is None:
                self._freed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)
