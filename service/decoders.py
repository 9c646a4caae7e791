"""A serving worker's decoding processes (`decoding.processes`): an image's bytes go to a process over a socket, its
pixels come back, one frame each way.

    decoders = DecodingProcesses(2, config.limits)         # started now: /readyz waits for them
    pixels = await decoders.decode(jpeg_bytes, 0, preprocess)   # uint8 [crop, crop, 3], or the InputError

Each process runs service/decode.py's `decode`, the code a decoding thread runs, so an image gets the same pixels and
the same refusal either way. The worker keeps the plan (header checks, the decoding budget: service/pixels.py) and
sends only the images it has granted.

Why not concurrent.futures' ProcessPoolExecutor, which these processes were until then: its pickling, its queue's
feeder thread and its management thread each hold the GIL the event loop needs, for every image. Over a socket, with
the event loop writing one frame and reading one, two processes cost the worker 0.18-0.51 ms less CPU a request and
served 1.13-1.35x the requests/s (2-core machine, 500x375 JPEGs; bench/README.md, 'Host CPU per request'). A process
that dies (killed for its memory, say) fails the images it held with an error and is started again for the next.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import signal
import socket
import struct
import typing as t
from dataclasses import dataclass, field

import numpy as np

from service.config import Limits
from service.errors import InputError

logger = logging.getLogger("service")
# to a process: id, the image's index in its request, the lengths of the preprocess JSON and of the image's bytes
REQUEST = struct.Struct("<QIII")
# from it: id, status (PIXELS, REFUSED: an InputError's [status, message] as JSON, FAILED: the exception's text),
# payload length; pixels are uint8 [crop, crop, 3]
REPLY = struct.Struct("<QBI")
PIXELS, REFUSED, FAILED = 0, 1, 2
READY = b"r"
START_S = 120.0  # a process that has not imported the decoder by then is not coming


def _exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes from `sock`, or EOFError when the worker has gone."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError
        got += k
    return bytes(buf)


def serve(sock: socket.socket, limits: Limits) -> None:
    """A decoding process: frames in, frames out, until the worker closes its end."""
    from service.decode import decode  # the decoder's imports (PIL, numpy), before saying ready

    # Ctrl-C at `bentoml serve` reaches its whole process group: the worker ends this process by closing the socket
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.sendall(READY)
    while True:
        try:
            ident, index, settings, length = REQUEST.unpack(_exactly(sock, REQUEST.size))
            preprocess = json.loads(_exactly(sock, settings))
            data = _exactly(sock, length)
        except EOFError:
            return
        try:
            out, status = decode(data, index, limits, preprocess).tobytes(), PIXELS
        except InputError as e:
            out, status = json.dumps([e.status, e.message]).encode(), REFUSED
        except Exception as e:  # noqa: BLE001 - a decoder bug on one odd image: the worker answers it with a 500
            out, status = f"{type(e).__name__}: {e}".encode(), FAILED
        sock.sendall(REPLY.pack(ident, status, len(out)) + out)


class _Replies(asyncio.Protocol):
    """The worker's end of one process's socket: replies matched to the futures waiting for them."""

    def __init__(self, link: _Link) -> None:
        self.link, self.buf = link, bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= REPLY.size:
            ident, status, n = REPLY.unpack_from(self.buf)
            if len(self.buf) < REPLY.size + n:
                return
            payload = bytes(self.buf[REPLY.size : REPLY.size + n])
            del self.buf[: REPLY.size + n]
            future, crop = self.link.pending.pop(ident)
            if future.done():  # its request went away
                continue
            if status == PIXELS:
                future.set_result(np.frombuffer(payload, np.uint8).reshape(crop, crop, 3))
            elif status == REFUSED:
                future.set_exception(InputError(*json.loads(payload)))
            else:
                future.set_exception(RuntimeError(f"decoding process: {payload.decode(errors='replace')}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.fail(f"decoding process {self.link.process.pid} ended (exit code {self.link.process.exitcode})")


@dataclass
class _Link:
    process: t.Any  # multiprocessing's SpawnProcess
    sock: socket.socket
    transport: asyncio.Transport | None = None
    pending: dict[int, tuple[asyncio.Future, int]] = field(default_factory=dict)
    alive: bool = True

    def fail(self, why: str) -> None:
        self.alive = False
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(RuntimeError(why))
        self.pending.clear()


def _start(limits: Limits) -> _Link:
    """One decoding process, spawned (the worker already runs threads, whose locks a fork would copy), once it has
    imported the decoder."""
    ours, theirs = socket.socketpair()
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(theirs, limits), daemon=True)
    process.start()
    theirs.close()
    ours.settimeout(START_S)
    if ours.recv(1) != READY:
        raise RuntimeError(f"decoding process {process.pid} did not start (exit code {process.exitcode})")
    ours.setblocking(False)
    return _Link(process, ours)


class DecodingProcesses:
    """`processes` decoding processes, started at once; `decode` sends an image to the least busy."""

    def __init__(self, processes: int, limits: Limits) -> None:
        self.limits = limits
        self.links = [_start(limits) for _ in range(processes)]
        self.ids = itertools.count()
        self.attaching: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        logger.info("decoding in %d processes", processes)

    async def _attached(self, i: int) -> _Link:
        """Link `i` on the running event loop, started again first if its process has died."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            if self.loop is not None:  # its transports belong to the first: a second would wait on them for ever
                raise RuntimeError("decoding processes serve the event loop that first used them, and no other")
            self.loop = loop
        link = self.links[i]
        if link.transport is not None and link.alive:
            return link
        self.attaching = self.attaching or asyncio.Lock()
        async with self.attaching:
            link = self.links[i]
            if not link.alive:
                link.sock.close()
                link = self.links[i] = await asyncio.to_thread(_start, self.limits)
            if link.transport is None:
                link.transport, _ = await loop.create_unix_connection(lambda: _Replies(link), sock=link.sock)
        return link

    async def decode(self, data: bytes, index: int, preprocess: dict[str, t.Any]) -> np.ndarray:
        """uint8 [crop, crop, 3] of one image, as service/decode.py's `decode(data, index, limits, preprocess)`."""
        i = min(range(len(self.links)), key=lambda n: len(self.links[n].pending) + (not self.links[n].alive))
        link = await self._attached(i)
        if not link.alive:  # it died while being attached: started again once
            link = await self._attached(i)
        if not link.alive or link.transport is None or link.transport.is_closing():
            raise RuntimeError(f"decoding process {link.process.pid} ended before it took image {index}")
        ident = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        link.pending[ident] = (future, int(preprocess["crop_size"]))
        settings = json.dumps(preprocess).encode()
        link.transport.write(REQUEST.pack(ident, index, len(settings), len(data)) + settings + data)
        return await future

    def shutdown(self) -> None:
        """Each process sees its socket close and ends; waited for, 5 s at most each."""
        for link in self.links:
            if link.transport is not None and self.loop is not None and not self.loop.is_closed():
                link.transport.close()
            else:
                link.sock.close()
            link.process.join(timeout=5)
