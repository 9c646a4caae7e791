"""Connections that send nothing useful are closed, a worker holds at most so many, and a worker told to stop drains
instead of resetting clients.

Header timeout: uvicorn (0.55, on httptools, a dependency, or on h11 where httptools is missing) closes a kept-alive
connection after `timeout_keep_alive` (5 s from BentoML) of silence after an answer, but a connection that sends its
request headers a byte at a time stays open for ever (bench/README.md, 'Attacks'). Here each connection must complete
each request's headers within `connections.header_timeout_s` of opening, or of its previous answer, whatever it
sends meanwhile; otherwise it is closed. The deadline is not a state of the parser's: an answer given before its
request's body was read (a 405, a 404) leaves the client sending that body, and h11 starts the next request only
once the body has ended. A timer that looked for h11's IDLE found SEND_BODY there, did nothing, and was never set
again: one more byte of body, then the next headers a byte every 2 s, held the connection for as long as the client
went on (issue 31). So the timer asks only whether a request's headers have come since it was set.

Head size: h11 answers 400 once a request's head passes 16 KB; httptools' parser keeps whatever it is sent until the
headers end. Under httptools a connection that has sent over MAX_HEAD_BYTES while its next request's headers are not
in is answered 400 (the service's error body) and closed, as under h11.

Open connections: each one holds a file, and a worker at its file limit (RLIMIT_NOFILE) can accept nothing, not
even to refuse it: asyncio logs nothing useful and every request times out (issue 31: 19,982 connections held open
reached a worker's 20,000). Here a worker holds at most `connections.max_open` connections (by default half its
soft file limit; the other half is for its own files: spooled uploads, the models, the decoding processes' pipes,
and connections being refused). A connection past that is answered 503 with Retry-After at once, without reading
its request, then closed when the client closes or after `LINGER_S`; the log says so in one WARNING line when the
cap is reached, and again only after the worker has fallen to half its cap. uvicorn's own `limit_concurrency` does
not fit: BentoML does not pass it, it answers in plain text without Retry-After, logs a warning line per refused
request, and it reads each request's headers first (a connection that sends none is not refused, it waits).

Drain: on SIGTERM uvicorn stops accepting at once and closes every idle kept-alive connection; a client that sends
its next request on one at that moment gets a reset (before this module, stopping a server under load reset 36
requests of 32 kept-alive clients).
Here the first SIGTERM starts a drain instead: /readyz answers 503 (so a load balancer or Kubernetes stops sending),
every answer carries `Connection: close` (so each client's connection ends after its answer, cleanly), and uvicorn's
own graceful shutdown starts once no request has been in flight for `QUIET_S`, or after `connections.drain_s` at most.

Upstream (uvicorn 0.55), what this relies on: `uvicorn.Server.handle_exit(sig, frame)` is the signal handler, and
each HTTP protocol (`h11_impl.H11Protocol`, `httptools_impl.HttpToolsProtocol`) has `connection_made`,
`data_received`, `on_response_complete`, `loop`, `transport`, `connections` (the server's set of
open connections) and `cycle`, which h11's `handle_events` and httptools' `on_headers_complete` set to a new object
for each request whose headers are in (httptools' before the previous answer, for a pipelined request). Checked
against bentoml 1.4.40 (its workers run `uvicorn.Server`: _bentoml_impl/worker/service.py), uvicorn 0.55.0, h11 0.16.0
and httptools 0.9.0. Guard: `check()` requires each of those names at start-up (service/patches.py). It can go when
uvicorn bounds the time to a request's headers and httptools' head size, caps open connections with an answer, and
drains kept-alive connections on SIGTERM.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import resource
import signal
import threading
import time
import typing as t

import uvicorn
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.errors import exit_with
from service import patches
from service.errors import RETRY_AFTER_S

logger = logging.getLogger("service")
QUIET_S = 1.0  # no request in flight for this long: the clients have gone elsewhere
# a refused connection's request is never read; closed with it unread, the kernel would reset the connection, and a
# client that had not yet read its 503 would see the reset instead: the connection is half-closed at once and closed
# when the client closes, or after this long
LINGER_S = 1.0
# the files a worker opens besides connections: 18 idle, 214 with three uploads of 64 large parts spooled to files
# (bench/README.md, 'Attacks'). An explicit connections.max_open must leave at least this many under the limit: a
# floor, not a bound, as each upload in flight may spool up to max_images_per_request parts (the default leaves half)
FILES_KEPT = 256
# the most bytes a connection may send while its next request's headers are not yet in: h11's own bound (uvicorn's
# default), kept where uvicorn runs httptools, whose parser holds whatever it is sent
MAX_HEAD_BYTES = 16 * 1024


class _State:
    draining = False
    in_flight = 0  # requests begun and not yet answered (health checks during the drain aside)
    last_request = 0.0  # when the latest of them ended, or the drain began
    at_cap = False  # the cap was reached and said so, and the worker has not fallen to half of it since


STATE = _State()


def file_limit() -> int:
    """The worker's soft limit on open files (RLIMIT_NOFILE), which every accepted connection counts against."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def max_open_or_exit(configured: int | None) -> int:
    """The most connections one worker holds open: `configured` (connections.max_open), or half the file limit; one
    line on stderr and exit status 2 for a value that leaves fewer than FILES_KEPT files under the limit."""
    limit = file_limit()
    if configured is None:
        return max(1, limit // 2)
    if configured > limit - FILES_KEPT:
        exit_with(
            f"serving config: connections.max_open is {configured}, but a worker may open {limit} files "
            f"(RLIMIT_NOFILE, soft: ulimit -n) and needs {FILES_KEPT} of them besides connections; raise the limit "
            f"or lower max_open (by default half the limit)"
        )
    return configured


def refusal(cap: int) -> bytes:
    """The whole answer to a connection past the cap: 503, Retry-After, the service's error body, then closed."""
    error = f"this worker holds its limit of {cap} open connections (connections.max_open); retry in {RETRY_AFTER_S} s"
    return _answer(503, "Service Unavailable", error, f"retry-after: {RETRY_AFTER_S}\r\n")


def _answer(status: int, reason: str, error: str, extra: str = "") -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


HEAD_REFUSAL = _answer(400, "Bad Request", f"the request's headers are over {MAX_HEAD_BYTES} bytes")


def protocols() -> dict[type, str]:
    """uvicorn's HTTP protocols here, each with the method after which a request's headers are in: httptools' where
    it is installed (a dependency: what uvicorn picks), h11's always (what it picks without httptools)."""
    found: dict[type, str] = {H11Protocol: "handle_events"}
    with contextlib.suppress(ImportError):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        found[HttpToolsProtocol] = "on_headers_complete"
    return found


def install(header_timeout_s: float, drain_s: float, cap: int | None = None) -> None:
    """Patch uvicorn in this process (a worker: it runs uvicorn after importing the service). `cap`: the most open
    connections (`max_open_or_exit`), None for no cap."""
    for protocol, headers_in in protocols().items():
        _patch(protocol, headers_in, header_timeout_s, cap)
    _drain(drain_s)


def _patch(protocol: type, headers_in: str, header_timeout_s: float, cap: int | None) -> None:
    if getattr(protocol, "_imgclf_patched", False):
        return
    made, received = protocol.connection_made, protocol.data_received
    events, complete = getattr(protocol, headers_in), protocol.on_response_complete
    answer = refusal(cap) if cap else b""
    # h11 bounds a request's head itself (16 KB, then 400); httptools' parser keeps whatever it is sent
    bound_head = protocol is not H11Protocol

    def arm(self: t.Any) -> None:
        disarm(self)
        self._imgclf_answered = self.cycle  # the request answered last (None: none yet)
        self._imgclf_head = 0  # bytes received since, while waiting for the next request's headers
        self._imgclf_headers = self.loop.call_later(header_timeout_s, headers_too_slow, self)

    def disarm(self: t.Any) -> None:
        if self._imgclf_headers is not None:
            self._imgclf_headers.cancel()
            self._imgclf_headers = None

    def headers_too_slow(self: t.Any) -> None:
        self._imgclf_headers = None
        # no request's headers since the timer was set: whether the client sent nothing, trickled them, or is still
        # sending a body its answer did not wait for (h11 not yet back to IDLE), its time is up
        if self.cycle is self._imgclf_answered and not self.transport.is_closing():
            logger.info("closed a connection whose request headers took over %g s", header_timeout_s)
            self.transport.close()

    def refuse(self: t.Any) -> None:
        if not STATE.at_cap:
            STATE.at_cap = True
            logger.warning(
                "this worker holds its cap of %d open connections (connections.max_open): each connection past it "
                "is answered 503 and closed; said again once half of them have closed",
                cap,
            )
        answer_and_close(self, answer)

    def answer_and_close(self: t.Any, whole: bytes) -> None:
        """Answer without reading what the client sends (or sent): half-closed at once, closed when the client
        closes or after LINGER_S. Closed with unread bytes at once, the kernel would reset the connection and the
        client could lose the answer before reading it."""
        self._imgclf_refused = True
        self.transport.write(whole)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def connection_made(self: t.Any, transport: t.Any) -> None:
        made(self, transport)  # adds it to self.connections
        if cap:
            if len(self.connections) > cap:
                return refuse(self)
            if STATE.at_cap and len(self.connections) <= cap // 2:
                STATE.at_cap = False
        arm(self)

    def data_received(self: t.Any, data: bytes) -> None:
        if self._imgclf_refused:  # answered before its request: what it sends is not read
            return
        received(self, data)
        if self.transport.get_protocol() is not self:  # it became a WebSocket
            disarm(self)
        elif bound_head and self._imgclf_headers is not None:  # still no headers: all of it was a request's head
            self._imgclf_head += len(data)
            # the parser holds at most MAX_HEAD_BYTES and one read (asyncio's, 256 KiB) before this
            if self._imgclf_head > MAX_HEAD_BYTES:
                disarm(self)
                answer_and_close(self, HEAD_REFUSAL)

    def headers_in_then(self: t.Any) -> None:
        cycle = self.cycle
        events(self)
        # a request's headers are in (a new cycle; its body has connections.body_timeout_s), or the connection
        # became a WebSocket
        if self.cycle is not cycle or self.transport.get_protocol() is not self:
            disarm(self)

    def on_response_complete(self: t.Any) -> None:
        # set before uvicorn's own: that goes on to a request already waiting (pipelined), whose headers disarm it
        arm(self)
        complete(self)
        # closed; or a request whose headers came before this answer (pipelined: httptools has its cycle already)
        # is now under way, so the connection is not waiting for headers
        if self.transport.is_closing() or not self.cycle.response_complete:
            disarm(self)

    protocol._imgclf_headers = None
    protocol._imgclf_answered = None
    protocol._imgclf_refused = False
    protocol._imgclf_head = 0
    protocol.connection_made = connection_made
    protocol.data_received = data_received
    setattr(protocol, headers_in, headers_in_then)
    protocol.on_response_complete = on_response_complete
    protocol._imgclf_patched = True


def _drain(drain_s: float) -> None:
    if getattr(uvicorn.Server, "_imgclf_patched", False):
        return
    handle_exit = uvicorn.Server.handle_exit

    def drain_then_exit(self: t.Any, sig: int, frame: t.Any) -> None:
        if sig != signal.SIGTERM or drain_s <= 0:
            return handle_exit(self, sig, frame)
        if STATE.draining:  # the arbiter passes SIGTERM on as well: one drain
            return None
        STATE.draining = True
        logger.info("SIGTERM: draining (readyz 503, Connection: close) before shutting down")
        threading.Thread(target=_exit_when_quiet, args=(handle_exit, self, sig, frame, drain_s), daemon=True).start()
        return None

    uvicorn.Server.handle_exit = drain_then_exit
    uvicorn.Server._imgclf_patched = True


def _exit_when_quiet(handle_exit: t.Callable, server: t.Any, sig: int, frame: t.Any, drain_s: float) -> None:
    deadline = time.monotonic() + drain_s
    STATE.last_request = max(STATE.last_request, time.monotonic())
    while time.monotonic() < deadline and (STATE.in_flight or time.monotonic() - STATE.last_request < QUIET_S):
        time.sleep(0.05)
    handle_exit(server, sig, frame)


class DrainMiddleware:
    """Counts the requests in flight; while draining, /readyz answers 503 and every answer closes its connection."""

    def __init__(self, app: t.Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if STATE.draining and scope["path"] == "/readyz":
            body = {"error": "shutting down"}
            return await JSONResponse(body, 503, {"Connection": "close"})(scope, receive, send)
        STATE.in_flight += 1
        try:
            if not STATE.draining:
                return await self.app(scope, receive, send)

            async def closing(message: dict) -> None:
                if message["type"] == "http.response.start":
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
                await send(message)

            await self.app(scope, receive, closing)
        finally:
            STATE.in_flight -= 1
            STATE.last_request = time.monotonic()


@patches.checks("service/connections.py")
def check() -> None:
    """uvicorn still has the shape the patches above wrap, in each of its HTTP protocols here."""
    for protocol, headers_in in protocols().items():
        kind = protocol.__name__
        for name in ("connection_made", "data_received", headers_in, "on_response_complete"):
            if not callable(getattr(protocol, name, None)):
                raise patches.mismatch("service/connections.py", f"{kind}.{name} is gone")
        source = inspect.getsource(protocol)  # the attributes each connection sets for itself
        for attribute in ("self.cycle = ", "self.loop = ", "self.transport", "self.connections = "):
            if attribute not in source:
                raise patches.mismatch("service/connections.py", f"{kind} no longer sets {attribute.split()[0]}")
    if not callable(getattr(uvicorn.Server, "handle_exit", None)):
        raise patches.mismatch("service/connections.py", "uvicorn.Server.handle_exit is gone")


patches.guard(check)
